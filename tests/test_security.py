"""Attacks by another user, acted out: the test runs as root and forks a child that drops to
uid 65534 (``setresuid``; the project's interpreter lives where 65534 cannot exec it, so the
child keeps running the already loaded one). Each attack is tried for real, and its outcome
checked: refused, and the victim untouched.
"""

from __future__ import annotations

import os
import pickle
import struct
import zlib
from collections.abc import Callable
from typing import Any

import pytest

import shmfs
from shmfs import frame
from shmfs.backends.sysv import ipc
from shmfs.backends.tmpfs import largevars, segdir
from shmfs.backends.tmpfs.largefile import create
from tests.other_user import as_user
from tests.tmpfs_files import large, slab_files

NOBODY = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")


def as_nobody(action: Callable[[], Any]) -> Any:
    """``action``'s result as uid 65534 (``other_user.as_user``)."""
    return as_user(NOBODY, action)


# ------------------------------------------------------------------ another user is denied


def test_other_user_cannot_read_list_attach_or_replace(root: str, key: int) -> None:
    seg = shmfs.attach(key, 1 << 20, root=root)
    seg[1] = "root's secret"
    directory = os.path.join(root, str(key))

    def attack() -> dict[str, str]:
        outcomes = {}
        for name, step in {
            "attach": lambda: shmfs.attach(key, root=root),
            "list": lambda: os.listdir(directory),
            "read": lambda: open(os.path.join(directory, "1"), "rb").read(),  # noqa: SIM115
            "replace": lambda: os.rename("/tmp", os.path.join(directory, "1")),
        }.items():
            try:
                step()
                outcomes[name] = "allowed"
            except (OSError, shmfs.ShmfsError) as exc:
                outcomes[name] = type(exc).__name__
        return outcomes

    outcomes = as_nobody(attack)
    assert outcomes == {
        "attach": "UnsafeSegment",
        "list": "PermissionError",
        "read": "PermissionError",
        "replace": "PermissionError",
    }
    assert seg[1] == "root's secret"
    seg.destroy()


def test_other_user_cannot_attach_a_private_sysv_segment(key: int) -> None:
    seg = shmfs.attach(key, 4096, 0o600, backend="sysv")
    seg[1] = "root's secret"
    try:
        outcome = as_nobody(lambda: shmfs.attach(key, backend="sysv").get(1))
        assert outcome["error"] == "UnsafeSegment"
        assert seg[1] == "root's secret"
    finally:
        seg.destroy()


# ------------------------------------------------------------------------- squatting


def test_squatted_sysv_key_refused(key: int) -> None:
    def squat() -> int:
        shmid = ipc.shmget(key, 8192, 0o666 | ipc.IPC_CREAT | ipc.IPC_EXCL)
        return shmid

    shmid = as_nobody(squat)
    try:
        with pytest.raises(shmfs.UnsafeSegment) as info:
            shmfs.attach(key, backend="sysv")
        assert info.value.owner == NOBODY
        attachment = ipc.Attachment(shmid, 8192, readonly=True)
        try:
            assert not any(attachment.view), "something was written into the squatted segment"
        finally:
            attachment.detach()
    finally:
        ipc.shm_remove(shmid)


def test_squatted_semaphore_set_refused(key: int) -> None:
    semid = as_nobody(lambda: ipc.semget(key, 3, 0o666 | ipc.IPC_CREAT | ipc.IPC_EXCL))
    try:
        with pytest.raises(shmfs.UnsafeSegment):
            shmfs.attach(key, 4096, backend="sysv")
    finally:
        ipc.sem_remove(semid)
        for shmid in _segments_with_key(key):
            ipc.shm_remove(shmid)


def _segments_with_key(key: int) -> list[int]:
    with open("/proc/sysvipc/shm", encoding="ascii") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return [int(row[1]) for row in rows if int(row[0]) & 0xFFFFFFFF == key & 0xFFFFFFFF]


def test_planted_temp_file_symlink_refused(
    root: str, key: int, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"ORIGINAL")
    seg = shmfs.attach(key, 1 << 20, root=root)
    monkeypatch.setattr(segdir, "token", lambda: "planted")
    os.symlink(victim, os.path.join(root, str(key), ".tmp-planted"))
    with pytest.raises(shmfs.ShmfsError):
        seg[1] = "a new value needs a new file"
    assert victim.read_bytes() == b"ORIGINAL"
    assert 1 not in seg
    seg.destroy()


# -------------------------------------------------------------- pickles from other users


def _malicious_frame(marker: str) -> bytes:
    """A cloudpickle-codec frame whose payload runs ``touch marker`` when unpickled."""

    class Exploit:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    payload = pickle.dumps(Exploit(), 5)
    head = frame.HEADER.pack(frame.MAGIC, frame.FORMAT_VERSION, 1, 0, 0, len(payload), 0, 0)
    crc = zlib.crc32(payload, zlib.crc32(head[:16]))
    return head[:16] + struct.pack("<I", crc) + head[20:] + payload


def _planted_variable(directory: str, name: str, frame: bytes) -> None:
    """What an attacker with write access to a segment directory can leave there."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        create(fd, name, frame, 0o644, 2016)
    finally:
        os.close(fd)


@pytest.fixture(params=["mapped", "pread"])
def read_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Reads through a mapping, or (past the mapping limit) copied with pread: both check trust."""
    if request.param == "pread":
        monkeypatch.setattr(largevars, "MAX_MAPPINGS", 0)
        monkeypatch.setattr(largevars, "_ADMIT_AFTER", 10**9)
    return str(request.param)


@pytest.mark.usefixtures("read_path")
def test_pickle_from_another_user_is_never_unpickled(
    shared_root: str, key: int, tmp_path: Any
) -> None:
    """About files: large values, each with a file of its own (small values' slab files are
    the next test). A file planted where the index names nothing is no value at all."""
    seg = shmfs.attach(key, 1 << 20, 0o666, root=shared_root)  # a world-writable segment
    seg[1] = large("root's value")
    seg[7] = large("root's other value")
    directory = os.path.join(shared_root, str(key))
    marker = tmp_path / "pwned"
    os.chmod(tmp_path, 0o777)
    frame = _malicious_frame(str(marker))

    def replace_seven() -> None:
        _planted_variable(directory, ".evil7", frame)
        os.rename(os.path.join(directory, ".evil7"), os.path.join(directory, "7"))

    assert as_nobody(replace_seven) is None
    assert os.stat(os.path.join(directory, "7")).st_uid == NOBODY
    with pytest.raises(shmfs.UnsafeSegment):
        seg.get(7)
    assert as_nobody(lambda: _planted_variable(directory, "8", frame)) is None
    assert seg.get(8, "absent") == "absent"  # the index does not name it
    os.unlink(os.path.join(directory, "8"))
    # Replacing one of root's own values by rename is refused the same way.
    as_nobody(lambda: _planted_variable(directory, ".evil", frame))
    os.rename(os.path.join(directory, ".evil"), os.path.join(directory, "1"))
    with pytest.raises(shmfs.UnsafeSegment):
        seg.get(1)
    assert not marker.exists(), "the attacker's pickle ran"
    seg.destroy()


def test_slab_file_of_another_user_is_never_unpickled(root: str, key: int) -> None:
    """Small values: trust is per slab file, by its owner. Pickles in a slab file another user
    owns (whose slots that user could have filled with anything) are refused; its json values,
    which run no code, and values in root's own files are read; trusting that user reads it."""
    with shmfs.attach(key, 1 << 20, root=root) as seg:
        seg[1] = {"pickled": True}
        seg[2] = {"pickled": "in a file of its own", "pad": large("p")}
    with shmfs.attach(key, root=root, codec="json") as seg:
        seg[3] = {"json": True}
    with shmfs.attach(key, root=root) as seg:
        slabs = slab_files(seg)
    for slab in slabs:  # every small value's slab file, not the large value's own file
        os.chown(os.path.join(root, str(key), slab), NOBODY, NOBODY)
    with shmfs.attach(key, root=root) as seg:
        with pytest.raises(shmfs.UnsafeSegment):
            seg.get(1)
        assert seg[3] == {"json": True}
        assert seg[2] == {"pickled": "in a file of its own", "pad": large("p")}
    with shmfs.attach(key, root=root, trust_uids=[NOBODY]) as seg:
        assert seg[1] == {"pickled": True}
        seg.destroy()


@pytest.mark.usefixtures("read_path")
@pytest.mark.parametrize("size", ["small", "large"])
def test_world_writable_file_is_not_trusted_for_pickles(
    shared_root: str, key: int, size: str
) -> None:
    """A value in a slab file (small) or in a file of its own (large), both mode 0666."""
    seg = shmfs.attach(key, 1 << 20, 0o666, root=shared_root)
    # root owns the file, but anyone may have written into it
    seg[1] = {"pickled": True, "pad": large("p") if size == "large" else ""}
    with pytest.raises(shmfs.UnsafeSegment):
        seg.get(1)
    seg.destroy()


# ----------------------------------------------------------------- sharing, done safely


def test_sharing_across_users_with_json(shared_root: str, key: int) -> None:
    seg = shmfs.attach(key, 1 << 20, 0o666, root=shared_root, codec="json")
    seg[1] = {"from": "root"}

    def other() -> Any:
        with shmfs.attach(key, root=shared_root, codec="json") as theirs:
            theirs[2] = {"from": "nobody"}
            return theirs[1]

    assert as_nobody(other) == {"from": "root"}
    assert seg[2] == {"from": "nobody"}
    seg.destroy()


def test_sharing_across_users_with_a_secret(shared_root: str, key: int) -> None:
    seg = shmfs.attach(key, 1 << 20, 0o666, root=shared_root, secret=b"shared key")

    def other() -> Any:
        with shmfs.attach(key, root=shared_root, secret=b"shared key") as theirs:
            theirs[2] = {"pickled": "by nobody", "fn": "lambdas would pickle too"}
        with shmfs.attach(key, root=shared_root, secret=b"wrong key") as wrong:
            wrong[3] = "signed with the wrong key"
        return True

    assert as_nobody(other) is True
    assert seg[2] == {"pickled": "by nobody", "fn": "lambdas would pickle too"}
    with pytest.raises(shmfs.UnsafeSegment):
        seg.get(3)
    seg.destroy()


def test_sticky_shared_root_is_accepted_and_protects_segments(shared_root: str, key: int) -> None:
    """A root like /dev/shm itself (1777): sharing it was asked for; others can create their
    own segments there but cannot move or delete ours."""
    shared = os.path.join(shared_root, "sticky")
    os.mkdir(shared)
    os.chmod(shared, 0o1777)
    seg = shmfs.attach(key, 4096, root=shared)
    seg[1] = "root's"

    def attack() -> dict[str, str]:
        outcome = {}
        try:
            os.rename(os.path.join(shared, str(key)), os.path.join(shared, "stolen"))
            outcome["rename"] = "allowed"
        except OSError as exc:
            outcome["rename"] = type(exc).__name__
        with shmfs.attach(key + 1, root=shared) as theirs:
            theirs[1] = "nobody's own segment"
            outcome["own segment"] = "ok"
        return outcome

    assert as_nobody(attack) == {"rename": "PermissionError", "own segment": "ok"}
    assert seg[1] == "root's"
    with pytest.raises(shmfs.UnsafeSegment):
        shmfs.attach(key + 1, root=shared)  # nobody's segment: not trusted by root
    seg.destroy()
    shmfs.attach(key + 1, root=shared, trust_uids=[NOBODY]).destroy()
    os.rmdir(shared)
