"""Values in a segment shared with other users, attacked by one of them: a mapped file truncated
under its readers, a file declaring more bytes than it holds, a signed value moved to another
index or segment, a secret carried by a pickled handle, and System V keys squatted by another
user.

The test runs as root and forks children that drop to another uid (``setresuid``; the project's
interpreter lives where those users cannot exec it, so the child keeps running the one already
loaded): ``ATTACKER`` (65534) acts; ``VICTIM`` plays an unprivileged user where root's bypass of
permissions would hide what an ordinary user meets.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import resource
import shutil
import time
from typing import Any

import cloudpickle
import pytest

import shmfs
from shmfs.backends.sysv import ipc
from shmfs.backends.tmpfs import largefile
from tests.conftest import sysv_objects
from tests.other_user import as_user
from tests.tmpfs_files import large, slab_files, var_path

ATTACKER = 65534
VICTIM = 4242
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")


# ------------------------------------------------- no SIGBUS, no allocation from a file


def _truncate_everything(directory: str) -> None:
    """The attacker's cut: every file of the segment they may write, to nothing."""
    for name in os.listdir(directory):
        with open(os.path.join(directory, name), "r+b") as target:
            target.truncate(0)


def test_truncating_a_shared_segment_under_its_readers_kills_none(
    shared_root: str, key: int
) -> None:
    """A world-writable segment, as the README shares one across users: a reader that has
    read (and, before, mapped) its files sees them cut to nothing by another user, and gets
    an error, not SIGBUS."""
    seg = shmfs.attach(key, 1 << 20, 0o666, root=shared_root, codec="json")
    seg[1] = large("a large value, in a file of its own")
    seg[2] = "a small value, in a slab file"
    seg.detach()
    directory = os.path.join(shared_root, str(key))

    def reader() -> dict[str, str]:
        with shmfs.attach(key, root=shared_root, codec="json") as mine:
            for _ in range(3):  # a variable is mapped from its second read on
                assert mine[1].startswith("a large value")
                assert mine[2] == "a small value, in a slab file"
            assert as_user(ATTACKER, lambda: _truncate_everything(directory)) is None
            outcomes = {}
            for index in (1, 2):
                try:
                    outcomes[str(index)] = repr(mine.get(index, None))
                except shmfs.ShmfsError as exc:
                    outcomes[str(index)] = type(exc).__name__
            return outcomes

    try:
        # The reader runs in a child of its own: on a mapped file the cut is SIGBUS.
        outcome = as_user(0, reader)
        assert "signal" not in outcome, f"the reader was killed: {outcome}"
        assert outcome == {"1": "CorruptSegment", "2": "CorruptSegment"}
    finally:
        shutil.rmtree(directory)


def _declare_a_huge_value(path: str, size: int) -> None:
    """Rewrite a variable file as one of ``size`` bytes, nearly all a hole (a page of tmpfs),
    whose current slot claims to hold a value of half that size."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, 0)
        os.ftruncate(fd, size)
        capacity = (size - largefile.HEADER_SIZE) // 2
        header = memoryview(bytearray(largefile.HEADER_SIZE)).cast("Q")
        header[0], header[1], header[2] = largefile.MAGIC, largefile.VERSION, capacity
        header[3], header[4], header[6] = largefile._seal(0), 0, capacity
        os.pwrite(fd, header.tobytes(), 0)
    finally:
        os.close(fd)


def test_a_sparse_file_declaring_gigabytes_fails_fast(shared_root: str, key: int) -> None:
    seg = shmfs.attach(key, 1 << 20, 0o666, root=shared_root, codec="json")
    seg[1] = large("root's value")
    path = var_path(seg, 1)
    size = 8 << 30  # costs the attacker a page; reading it would cost 4 GiB and seconds
    assert as_user(ATTACKER, lambda: _declare_a_huge_value(path, size)) is None
    assert os.stat(path).st_blocks * 512 < 1 << 20

    def reader() -> dict[str, Any]:
        # Room for the test, not for the declared value: an attempt to allocate it (or to
        # map it) fails here rather than take the machine's memory.
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, hard))
        started = time.monotonic()
        try:
            with shmfs.attach(key, root=shared_root, codec="json") as mine:
                outcome: dict[str, Any] = {"value": repr(mine.get(1))}
        except Exception as exc:
            outcome = {"error": type(exc).__name__, "message": str(exc)}
        outcome["seconds"] = time.monotonic() - started
        return outcome

    try:
        outcome = as_user(0, reader)
        assert outcome.get("error") == "CorruptSegment", outcome
        assert "sparse" in outcome["message"]
        assert outcome["seconds"] < 2
    finally:
        os.unlink(path)  # not zeroed by destroy: it holds nothing
        seg = shmfs.attach(key, root=shared_root)
        seg.destroy()


def test_only_files_nobody_else_can_shrink_are_mapped(root: str, key: int) -> None:
    """A private segment keeps its mappings and the C fast path; one others may write is read
    with pread throughout (and without the fast path)."""
    with shmfs.attach(key, 1 << 20, 0o600, root=root) as private:
        private[1], private[2] = large("x"), "small"
        assert private[1] == large("x") and private[2] == "small"
        backend = private._backend
        assert isinstance(backend._meta, memoryview)  # type: ignore[union-attr]
        assert all(slab.hot is not None for slab in backend._slabs.files.values())  # type: ignore[union-attr]
        private.destroy()
    with shmfs.attach(key, 1 << 20, 0o644, root=root) as readable:  # others read, owner writes
        readable[1], readable[2] = large("x"), "small"
        assert readable[1] == large("x")
        assert isinstance(readable._backend._meta, memoryview)  # type: ignore[union-attr]
        readable.destroy()
    with shmfs.attach(key, 1 << 20, 0o666, root=root, codec="json") as shared:
        shared[1], shared[2] = large("x"), "small"
        for _ in range(3):
            assert shared[1] == large("x") and shared[2] == "small"
        backend = shared._backend
        assert backend.hot is None  # type: ignore[union-attr]
        assert not isinstance(backend._meta, memoryview)  # type: ignore[union-attr]
        assert slab_files(shared)
        assert all(slab.hot is None for slab in backend._slabs.files.values())  # type: ignore[union-attr]
        assert all(var.hot is None for var in backend._large.vars.values())  # type: ignore[union-attr]
        with shared.view(1) as viewed:  # a copy here, taken under the lock
            assert viewed == large("x")
        shared.destroy()


def test_an_index_file_another_user_owns_turns_the_fast_path_off(root: str, key: int) -> None:
    """Ownership is checked per file: in a segment whose other files are private, an index
    file handed to another user (who may now truncate it) is read with pread, and the C fast
    path, which would read it through a mapping, is turned off for the handle."""
    with shmfs.attach(key, 1 << 20, root=root, codec="json") as seg:
        seg[1] = "before"
    directory = os.path.join(root, str(key))
    for name in os.listdir(directory):
        if name.startswith(".index-"):
            os.chown(os.path.join(directory, name), ATTACKER, ATTACKER)
    with shmfs.attach(key, root=root, codec="json", trust_uids=[ATTACKER]) as seg:
        assert seg._backend.hot is None  # type: ignore[union-attr]
        assert seg[1] == "before"
        seg[1] = "after"
        for index in range(2, 200):  # enough to build a new index, this user's own
            seg[index] = index
        assert seg[1] == "after" and seg[199] == 199
        seg.destroy()


# ---------------------------------------------------------------- signed values stay put


def _copy_frame(key: int, root: str, source: int, target: int, target_key: int) -> None:
    """The attacker's move: the stored bytes of ``source`` in segment ``key``, written
    unchanged as ``target`` of segment ``target_key`` (both world-writable), without the
    secret. Reaches the backend directly: it moves bytes, as a program of the attacker's
    own writing the files would."""
    with shmfs.attach(key, root=root, codec="raw") as seg:
        data = bytes(seg._backend.read(source))  # type: ignore[union-attr, arg-type]
    with shmfs.attach(target_key, root=root, codec="raw") as seg, seg.lock():
        seg._backend.write(target, data)  # type: ignore[union-attr]


def test_a_signed_value_moved_to_another_index_or_segment_is_refused(
    shared_root: str, key: int
) -> None:
    secret = b"shared by alice and the admin tool"
    alice = shmfs.attach(key, 1 << 20, 0o666, root=shared_root, secret=secret)
    other = shmfs.attach(key + 1, 1 << 20, 0o666, root=shared_root, secret=secret)
    try:
        alice[1] = {"user": "alice", "admin": True}  # the admin grant, signed
        alice[2] = {"user": "mallory", "admin": False}
        assert as_user(ATTACKER, lambda: _copy_frame(key, shared_root, 1, 2, key)) is None
        with pytest.raises(shmfs.UnsafeSegment, match="index"):
            alice.get(2)
        assert as_user(ATTACKER, lambda: _copy_frame(key, shared_root, 1, 1, key + 1)) is None
        with pytest.raises(shmfs.UnsafeSegment):
            other.get(1)
        # Put back where it was signed for, the same bytes are accepted: the binding, not the
        # bytes, is what the move broke.
        assert as_user(ATTACKER, lambda: _copy_frame(key, shared_root, 1, 1, key)) is None
        assert alice[1] == {"user": "alice", "admin": True}
    finally:
        other.destroy()
        alice.destroy()


@pytest.mark.parametrize("backend_name", ["tmpfs", "sysv", "redis"])
def test_signed_values_are_bound_to_their_index_on_every_backend(
    backend_name: str, root: str, key: int, request: pytest.FixtureRequest
) -> None:
    where = str(request.getfixturevalue("redis_url")) if backend_name == "redis" else root
    seg = shmfs.attach(key, 1 << 16, backend=backend_name, root=where, secret=b"s")
    try:
        seg[1] = "granted"
        raw = shmfs.attach(key, backend=backend_name, root=where, codec="raw")
        try:
            data = bytes(raw._backend.read(1))  # type: ignore[union-attr, arg-type]
            with raw.lock():
                raw._backend.write(2, data)  # type: ignore[union-attr]
        finally:
            raw.detach()
        with pytest.raises(shmfs.UnsafeSegment):
            seg.get(2)
        assert seg[1] == "granted"
    finally:
        seg.destroy()


# ------------------------------------------------------------ pickles carry no secret


def test_a_pickled_handle_carries_no_secret(
    shared_root: str, key: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The closure stored with cloudpickle captures the handle; another user who can read
    the segment reads what was stored, and must not find the secret in it."""
    secret = b"the-team-secret-4f1c"
    monkeypatch.delenv("SHMFS_SECRET", raising=False)
    seg = shmfs.attach(key, 1 << 20, 0o644, root=shared_root, secret=secret)
    try:
        seg[1] = lambda: seg[2]  # a closure over the handle, pickled by value
        seg[2] = "payload"
        assert secret not in pickle.dumps(seg)
        assert secret not in cloudpickle.dumps(seg)

        directory = os.path.join(shared_root, str(key))

        def find_secret() -> bool:  # every file of the segment, as its mode lets others read
            found = False
            for name in os.listdir(directory):
                try:
                    with open(os.path.join(directory, name), "rb") as stored:
                        found = found or secret in stored.read()
                except PermissionError:  # writers' files (.lock, .views): not for readers
                    continue
            return found

        assert as_user(ATTACKER, find_secret) is False
        # Unpickled without a secret, the handle refuses every value, and says how to fix it.
        bare = pickle.loads(pickle.dumps(seg))
        try:
            with pytest.raises(shmfs.UnsafeSegment, match="SHMFS_SECRET"):
                bare.get(2)
            with pytest.raises(shmfs.UnsafeSegment, match="SHMFS_SECRET"):
                bare[3] = "unsigned"
            assert 3 not in seg
            assert 2 in bare  # what needs no value still works
        finally:
            bare.detach()
        monkeypatch.setenv("SHMFS_SECRET", secret.decode())
        supplied = pickle.loads(pickle.dumps(seg))
        try:
            assert supplied[1]() == "payload"
            supplied[3] = "signed by the receiver"
            assert seg[3] == "signed by the receiver"
        finally:
            supplied.detach()
    finally:
        seg.destroy()


def _get_in_child(seg: shmfs.Segment) -> Any:
    try:
        return seg.get(2)
    except shmfs.ShmfsError as exc:
        return type(exc).__name__
    finally:
        seg.detach()


def test_a_spawned_child_supplies_the_secret_from_its_environment(
    root: str, key: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHMFS_SECRET", raising=False)
    seg = shmfs.attach(key, 1 << 20, root=root, secret="s3")
    try:
        seg[2] = "signed"
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(1) as pool:
            assert pool.apply(_get_in_child, (seg,)) == "UnsafeSegment"
        monkeypatch.setenv("SHMFS_SECRET", "s3")
        with ctx.Pool(1) as pool:
            assert pool.apply(_get_in_child, (seg,)) == "signed"
    finally:
        seg.destroy()


def test_a_pickled_cache_carries_no_secret(
    root: str, key: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHMFS_SECRET", raising=False)
    cache = shmfs.Cache(key, 1 << 20, root=root, secret=b"cache-secret-77")
    try:
        cache["a"] = 1
        pickled = pickle.dumps(cache)
        assert b"cache-secret-77" not in pickled
        with pytest.raises(shmfs.UnsafeSegment, match="SHMFS_SECRET"):
            pickle.loads(pickled)
        monkeypatch.setenv("SHMFS_SECRET", "cache-secret-77")
        copy = pickle.loads(pickled)
        try:
            assert copy["a"] == 1
        finally:
            copy.close()
    finally:
        cache.destroy()


# ------------------------------------------------------------------- squatted SysV keys


def _remove_key(key: int) -> None:
    for kind, found, ident in sysv_objects():
        if found == key & 0xFFFFFFFF:
            if kind == "shm":
                ipc.shm_remove(ident)
            else:
                ipc.sem_remove(ident)


def _attach_sysv(key: int) -> str:
    with shmfs.attach(key, 4096, backend="sysv"):
        return "attached"


@pytest.mark.parametrize(
    ("kind", "nsems", "mode", "victim"),
    [
        ("sem", 1, 0o666, 0),  # a set of the wrong shape: was "over kernel.shmmax"
        ("sem", 3, 0o600, VICTIM),  # another user's private set: was a bare EACCES
        ("shm", 0, 0o600, VICTIM),  # another user's private segment: the same
    ],
)
def test_a_squatted_sysv_key_names_its_owner(
    key: int, kind: str, nsems: int, mode: int, victim: int
) -> None:
    def squat() -> int:
        if kind == "sem":
            return ipc.semget(key, nsems, mode | ipc.IPC_CREAT | ipc.IPC_EXCL)
        return ipc.shmget(key, 8192, mode | ipc.IPC_CREAT | ipc.IPC_EXCL)

    try:
        assert isinstance(as_user(ATTACKER, squat), int)
        outcome = as_user(victim, lambda: _attach_sysv(key))
        assert outcome["error"] == "UnsafeSegment", outcome
        assert outcome["owner"] == ATTACKER
        assert f"uid {ATTACKER}" in outcome["message"]
        assert str(key) in outcome["message"]
        assert "shmmax" not in outcome["message"]
    finally:
        _remove_key(key)
