"""tmpfs-only behaviour: files, modes, symlinks, owners and damaged files on disk.

These poke at the directory layout on purpose (corrupting files, planting symlinks), which only
means something for the tmpfs backend.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest

import shmfs
from shmfs import hotpath
from shmfs.backends import tmpfs
from shmfs.backends.tmpfs import largevars, segdir
from shmfs.backends.tmpfs.largefile import HEADER_SIZE
from tests.tmpfs_files import large, pwrite, slab_files, slot_of, var_path


@pytest.fixture
def backend(tmpfs_backend: str) -> str:
    """These tests reach into tmpfs files: they run on the tmpfs backend only (with the C
    fast path and without it)."""
    return tmpfs_backend


NOBODY = 65534


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def umask() -> Iterator[Any]:
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
@pytest.mark.parametrize(
    ("perm", "file_mode", "dir_mode"), [(0o600, 0o600, 0o700), (0o640, 0o640, 0o750)]
)
def test_modes_ignore_umask(
    root: str, key: int, umask: Any, mask: int, perm: int, file_mode: int, dir_mode: int
) -> None:
    umask(mask)
    with shmfs.attach(key, 1 << 20, perm, root=root) as seg:
        seg[1] = "x"
        seg[2] = "y" * 10_000  # a second file made on the grow path
    path = os.path.join(root, str(key))
    assert mode(path) == dir_mode
    for name in os.listdir(path):
        # the lock and the views file are for writers alone: only the owner writes here
        expected = 0o600 if name in (".lock", ".views") else file_mode
        assert mode(os.path.join(path, name)) == expected, name
    shmfs.attach(key, root=root).destroy()


def test_default_root_is_per_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHMFS_ROOT", raising=False)
    assert tmpfs.default_root() == f"/dev/shm/shmfs-{os.geteuid()}"
    monkeypatch.setenv("SHMFS_ROOT", "/dev/shm/elsewhere")
    assert tmpfs.default_root() == "/dev/shm/elsewhere"


def test_root_from_environment(root: str, key: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHMFS_ROOT", root)
    with shmfs.attach(key) as seg:
        seg[1] = 1
        assert seg.stats()["location"] == os.path.join(root, str(key))
        seg.destroy()


def test_missing_root_is_created_private(root: str, key: int) -> None:
    nested = os.path.join(root, "new")
    with shmfs.attach(key, root=nested) as seg:
        seg.destroy()
    assert mode(nested) == 0o700
    os.rmdir(nested)


def test_root_without_parent_is_unavailable(key: int) -> None:
    with pytest.raises(shmfs.BackendUnavailable):
        shmfs.attach(key, root="/nonexistent-shmfs-parent/root")


def test_unsafe_roots_refused(root: str, key: int) -> None:
    open_root = os.path.join(root, "open")
    os.mkdir(open_root)
    os.chmod(open_root, 0o777)
    link = os.path.join(root, "link")
    os.symlink(open_root, link)
    try:
        for bad in (open_root, link):
            with pytest.raises(shmfs.UnsafeSegment):
                shmfs.attach(key, root=bad)
        os.chmod(open_root, 0o700)
        os.chown(open_root, NOBODY, NOBODY)
        with pytest.raises(shmfs.UnsafeSegment):
            shmfs.attach(key, root=open_root)
        assert os.listdir(open_root) == []
    finally:
        os.unlink(link)
        os.rmdir(open_root)


def test_symlinked_segment_refused(root: str, key: int, tmp_path: Any) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    os.symlink(victim, os.path.join(root, str(key)))
    try:
        with pytest.raises(shmfs.UnsafeSegment):
            shmfs.attach(key, root=root)
        assert list(victim.iterdir()) == []
    finally:
        os.unlink(os.path.join(root, str(key)))


def test_squatted_segment_refused(root: str, key: int) -> None:
    squat = os.path.join(root, str(key))
    os.mkdir(squat, 0o777)
    os.chown(squat, NOBODY, NOBODY)
    try:
        with pytest.raises(shmfs.UnsafeSegment) as info:
            shmfs.attach(key, root=root)
        assert info.value.owner == NOBODY
        assert os.listdir(squat) == []
    finally:
        os.rmdir(squat)


def test_symlinked_variable_refused_and_victim_untouched(
    root: str, key: int, tmp_path: Any
) -> None:
    """A large variable's file replaced by a symlink: reads and writes refuse it and never
    follow it. (Only values too big for a slot have a file of their own.)"""
    victim = tmp_path / "victim"
    victim.write_bytes(b"IMPORTANT CONTENT" * 500)
    with shmfs.attach(key, 1 << 20, root=root) as seg:
        seg[7] = large("mine")
    path = os.path.join(root, str(key), "7")
    os.unlink(path)
    os.symlink(victim, path)
    with shmfs.attach(key, root=root) as seg:
        with pytest.raises(shmfs.UnsafeSegment):
            seg.get(7)
        with pytest.raises(shmfs.UnsafeSegment):
            seg.put(7, large("overwrite"))
        os.unlink(path)
        seg.destroy()
    assert victim.read_bytes() == b"IMPORTANT CONTENT" * 500


def test_planted_symlink_named_like_a_variable_is_never_followed(
    root: str, key: int, tmp_path: Any
) -> None:
    """A symlink planted where no variable is: the index does not name it, so it is no value;
    storing that index (small or large) never writes through it."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"IMPORTANT CONTENT" * 500)
    with shmfs.attach(key, 1 << 20, root=root) as seg:
        path = os.path.join(root, str(key), "7")
        os.symlink(victim, path)
        assert 7 not in seg and seg.get(7, "absent") == "absent"
        seg[7] = "small"
        assert seg[7] == "small"
        with contextlib.suppress(shmfs.UnsafeSegment):  # refusing it is as good as replacing it
            seg[7] = large("big")
            assert seg[7] == large("big") and not os.path.islink(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        seg.destroy()
    assert victim.read_bytes() == b"IMPORTANT CONTENT" * 500


def test_symlinked_slab_file_refused_and_victim_untouched(
    root: str, key: int, tmp_path: Any
) -> None:
    """A slab file replaced by a symlink: small values in it are refused (``UnsafeSegment``),
    never read or written through the link."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"IMPORTANT CONTENT" * 500)
    with shmfs.attach(key, 1 << 20, root=root) as seg:
        seg[1] = "small"
        (slab,) = slab_files(seg)
    path = os.path.join(root, str(key), slab)
    os.rename(path, path + "-saved")
    os.symlink(victim, path)
    try:
        with shmfs.attach(key, root=root) as seg:
            with pytest.raises(shmfs.UnsafeSegment):
                seg.get(1)
            with pytest.raises(shmfs.UnsafeSegment):
                seg.put(1, "overwrite")
    finally:
        os.unlink(path)
        os.rename(path + "-saved", path)
        shmfs.attach(key, root=root).destroy()
        assert victim.read_bytes() == b"IMPORTANT CONTENT" * 500


def test_value_from_untrusted_user_not_unpickled(root: str, key: int) -> None:
    """About files: large values, each with a file of its own, chowned one by one (the slab
    files of small values are covered in test_security.py)."""
    pad = large("p")
    with shmfs.attach(key, 1 << 20, root=root) as seg:
        seg[1] = {"pickled": True, "pad": pad}
        seg[2] = {"pickled": "by me", "pad": pad}
        seg[4] = {"small": "in a slab, not chowned"}
    with shmfs.attach(key, root=root, codec="json") as seg:
        seg[3] = {"json": True, "pad": pad}
    for name in ("1", "3"):
        os.chown(os.path.join(root, str(key), name), NOBODY, NOBODY)
    with shmfs.attach(key, root=root) as seg:
        with pytest.raises(shmfs.UnsafeSegment):
            seg.get(1)
        assert seg[3] == {"json": True, "pad": pad}  # json runs no code: readable from anyone
        assert seg[2] == {"pickled": "by me", "pad": pad}
        assert seg[4] == {"small": "in a slab, not chowned"}
    with shmfs.attach(key, root=root, trust_uids=[NOBODY]) as seg:
        assert seg[1] == {"pickled": True, "pad": pad}
        seg.destroy()


def test_destroy_zeroes_what_observers_map(root: str, key: int) -> None:
    """Both kinds of file: a large value's own file and the slab file of a small one."""
    seg = shmfs.attach(key, 1 << 20, root=root)
    seg[1] = b"TOP-SECRET" * 600
    seg[2] = b"SLAB-SECRET" * 10
    views = []
    for path in (var_path(seg, 1), slot_of(seg, 2)[0]):
        with open(path, "rb") as observer:
            views.append(mmap.mmap(observer.fileno(), 0, access=mmap.ACCESS_READ))
    try:
        assert b"TOP-SECRET" in views[0][:] and b"SLAB-SECRET" in views[1][:]
        seg.destroy()
        assert b"TOP-SECRET" not in views[0][:]
        assert b"SLAB-SECRET" not in views[1][:]
        assert not os.path.exists(os.path.join(root, str(key)))
    finally:
        for view in views:
            view.close()


@pytest.mark.parametrize("size", ["large", "small"])
def test_remove_zeroes_what_observers_map(seg: shmfs.Segment, size: str) -> None:
    """A large value's own file, or a small value's slot in its slab file."""
    seg[1] = b"TOP-SECRET" * (600 if size == "large" else 10)
    seg[2] = b"NEIGHBOUR" * 10
    path = var_path(seg, 1) if size == "large" else slot_of(seg, 1)[0]
    with open(path, "rb") as observer:
        view = mmap.mmap(observer.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        assert b"TOP-SECRET" in view[:]
        seg.remove(1)
        assert b"TOP-SECRET" not in view[:]
        assert seg[2] == b"NEIGHBOUR" * 10
    finally:
        view.close()


def _damage(seg: shmfs.Segment, index: int, offset: int, data: bytes) -> None:
    """Damage a large variable's own file."""
    pwrite(var_path(seg, index), data, offset)


@pytest.mark.parametrize(
    ("offset", "data", "message"),
    [
        (0, b"NOTSHMFS", "header"),  # variable file magic
        (8, (2).to_bytes(8, "little"), "version"),  # a future variable-file format
        (HEADER_SIZE, b"\x00\x00\x00\x00", "magic"),  # the frame's magic
        (HEADER_SIZE + 4, b"\x09", "version"),  # a future frame format
        (HEADER_SIZE + 30, b"\xff\xfe", "checksum"),  # a flipped payload byte
        (48, (1 << 40).to_bytes(8, "little"), "corrupt"),  # slot length beyond the slot
    ],
)
def test_damaged_files_raise_corrupt_segment(
    attach: Any, key: int, offset: int, data: bytes, message: str
) -> None:
    """About files: a large value's own file, damaged (slots: the next test)."""
    seg = attach(key, 1 << 20)
    seg[1] = large("a value long enough to damage in the middle")
    _damage(seg, 1, offset, data)
    reader = attach(key)
    with pytest.raises(shmfs.CorruptSegment):
        reader.get(1)
    reader[2] = "the rest of the segment still works"
    assert reader[2] == "the rest of the segment still works"


@pytest.mark.parametrize(
    ("at", "data", "message"),
    [
        (16, b"\x00\x00\x00\x00", "magic"),  # the frame's magic
        (16 + 4, b"\x09", "version"),  # a future frame format
        (16 + 30, b"\xff\xfe", "checksum"),  # a flipped payload byte
        (0, (0xFFFF).to_bytes(2, "little"), "length"),  # seal length beyond the slot
        (8, (99).to_bytes(8, "little"), "another variable"),  # the slot names index 99
    ],
)
def test_damaged_slots_raise_corrupt_segment(
    attach: Any, key: int, at: int, data: bytes, message: str
) -> None:
    """A small value's slot, damaged in its frame, its seal or the index it names: the reader
    gets ``CorruptSegment`` naming the segment and the index, and the rest works."""
    seg = attach(key, 1 << 20)
    seg[1] = "a value long enough to damage in the middle"
    seg[2] = "a neighbour in the same slab file"
    path, offset, _ = slot_of(seg, 1)
    pwrite(path, data, offset + at)
    reader = attach(key)
    with pytest.raises(shmfs.CorruptSegment) as info:
        reader.get(1)
    found = info.value
    if message in ("length", "another variable"):  # found by the backend, which names them
        assert (found.key, found.index) == (key, 1), message
    else:  # found by the frame's checks (codecs.py), which may not know them
        assert (getattr(found, "key", key), getattr(found, "index", 1)) == (key, 1), message
    assert reader[2] == "a neighbour in the same slab file"
    reader[3] = "the rest of the segment still works"
    assert reader[3] == "the rest of the segment still works"
    reader[1] = "overwriting a damaged value clears it"
    assert reader[1] == "overwriting a damaged value clears it"


def test_truncated_and_foreign_files_raise_corrupt_segment(attach: Any, key: int) -> None:
    """Files of their own truncated or replaced by foreign bytes, and a truncated slab file:
    ``CorruptSegment``. A foreign file the index does not name is no value at all."""
    seg = attach(key, 1 << 20)
    seg.put(1, large("x"))
    seg.put(2, large("y"))
    seg.put(3, "small")
    location = seg.stats()["location"]
    (slab,) = slab_files(seg)
    seg.detach()  # a truncated file must not be mapped by a live reader (SIGBUS)
    os.truncate(os.path.join(location, "1"), 10)
    with open(os.path.join(location, "2"), "wb") as foreign:
        foreign.write(os.urandom(4096))
    os.truncate(os.path.join(location, slab), 100)
    with open(os.path.join(location, "4"), "wb") as foreign:
        foreign.write(os.urandom(4096))
    reader = attach(key)
    for index in (1, 2, 3):
        with pytest.raises(shmfs.CorruptSegment):
            reader.get(index)
    assert reader.get(4, "absent") == "absent"
    os.unlink(os.path.join(location, "4"))


def test_signed_values(attach: Any, key: int) -> None:
    signer = attach(key, 1 << 20, secret=b"k1")
    signer[1] = {"signed": 1, "pad": large("p")}  # a file of its own, damaged below
    assert signer[1] == {"signed": 1, "pad": large("p")}
    with pytest.raises(shmfs.UnsafeSegment):
        attach(key)[1]  # no secret: refuses a signed value
    with pytest.raises(shmfs.UnsafeSegment):
        attach(key, secret="other")[1]
    attach(key)[2] = "unsigned"
    with pytest.raises(shmfs.UnsafeSegment):
        signer[2]
    _damage(signer, 1, HEADER_SIZE + 40, b"\x00")
    with pytest.raises((shmfs.UnsafeSegment, shmfs.CorruptSegment)):
        attach(key, secret=b"k1")[1]


@pytest.fixture
def few_mappings(monkeypatch: pytest.MonkeyPatch) -> int:
    """A small mapping limit, so that tests can go past it with a few hundred variables."""
    monkeypatch.setattr(largevars, "MAX_MAPPINGS", 200)
    return 200


def _big(index: int) -> str:
    """A value with a file of its own: only those are mapped one by one."""
    return f"{index}:" + large("v")


def test_mappings_are_bounded(attach: Any, key: int, few_mappings: int) -> None:
    seg = attach(key, 16 << 20)
    count = few_mappings + 100
    for index in range(count):
        seg[index] = _big(index)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        assert all(seg[index] == _big(index) for index in range(count))
    assert len(seg._backend._large.vars) == few_mappings
    # No descriptor per mapping where mappings keep none (the C module, or Python 3.13), at most
    # one per kept mapping otherwise; never one per variable.
    kept = 0 if hotpath.maps_without_descriptors() else few_mappings
    assert len(os.listdir("/proc/self/fd")) <= before + kept + 2
    assert len(seg) == count


def test_mappings_keep_no_descriptors_where_they_can(attach: Any, key: int) -> None:
    if not hotpath.maps_without_descriptors():
        pytest.skip("mmap keeps a descriptor before Python 3.13, and the C module is not built")
    seg = attach(key, 16 << 20)
    before = len(os.listdir("/proc/self/fd"))
    for index in range(500):
        seg[index] = _big(index)
        assert seg[index] == seg[index] == _big(index)  # the second get maps it
    assert len(seg._backend._large.vars) == 500
    assert len(os.listdir("/proc/self/fd")) <= before + 2
    assert largevars.MAX_MAPPINGS == 16384


def test_the_process_shares_one_budget_of_mappings(
    attach: Callable[..., shmfs.Segment], key: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each handle keeps its own mappings, but all of them together stay within
    PROCESS_MAPPINGS (each is an entry in vm.max_map_count): past it, a handle maps a variable
    in place of one of its own, and reads the others without mapping them."""
    from shmfs.backends.tmpfs.largefile import VarFile  # noqa: PLC0415  # the process-wide count

    monkeypatch.setattr(largevars, "PROCESS_MAPPINGS", VarFile.live + 150)
    first, second = attach(key, 4 << 20), attach(key + 1, 4 << 20)
    for seg in (first, second):
        for index in range(120):
            seg[index] = _big(index)
            # the second get maps it, if there is room
            assert seg[index] == seg[index] == _big(index)
    assert len(first._backend._large.vars) == 120
    assert len(second._backend._large.vars) <= 31  # what the budget left, plus the one swapped in
    assert all(second[index] == _big(index) for index in range(120))  # read all the same
    assert VarFile.live <= largevars.PROCESS_MAPPINGS + 1
    first.detach()
    assert VarFile.live <= largevars.PROCESS_MAPPINGS + 1 - 120


def _sized(index: int) -> str:
    """Values of varying sizes, each with a file of its own."""
    return large(f"value {index}") + "z" * (index % 50 * 40)


def test_unmapped_variables_are_read_with_pread(attach: Any, key: int, few_mappings: int) -> None:
    """Past the mapping limit, variables are copied with pread instead of mapped and unmapped
    on every get; a variable read often is mapped after all. Every value stays exact, and no
    descriptor or mapping is left behind. (About files: large values only are mapped.)"""
    seg = attach(key, 32 << 20)
    count = few_mappings + 300
    for index in range(count):
        seg[index] = _sized(index)
    for index in range(count):
        assert seg[index] == _sized(index)
    before = len(os.listdir("/proc/self/fd"))  # the mappings' own, before Python 3.13
    for index in range(count):
        assert seg[index] == _sized(index)
    vars_ = seg._backend._large.vars
    assert len(vars_) == largevars.MAX_MAPPINGS
    unmapped = count - 1
    assert unmapped not in vars_
    for _ in range(largevars._ADMIT_AFTER):
        assert seg[unmapped] == _sized(unmapped)
    assert unmapped in vars_  # read often enough to be mapped
    assert len(vars_) == largevars.MAX_MAPPINGS
    assert len(os.listdir("/proc/self/fd")) <= before + 1


def test_unmapped_reads_see_replacements_and_removals(
    attach: Any, key: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(largevars, "MAX_MAPPINGS", 0)  # every read finds no room to map
    monkeypatch.setattr(largevars, "_ADMIT_AFTER", 10**9)
    seg, other = attach(key, 1 << 20), attach(key)
    seg[1] = large("first")
    assert seg[1] == large("first")
    other[1] = b"x" * 100_000  # a new, bigger file: past the first page, so it is mapped
    assert seg[1] == b"x" * 100_000
    seg[2] = large("two")
    assert seg[2] == large("two") and 2 not in seg._backend._large.vars
    other[2] = large("replaced by another handle")
    assert seg[2] == large("replaced by another handle")
    other[2] = "made small by another handle"  # its file goes: a slot now
    assert seg[2] == "made small by another handle"
    other[2] = large("large again")
    assert seg[2] == large("large again")
    del other[2]
    assert 2 not in seg and seg.get(2, "gone") == "gone"


def test_unmapped_writes_go_in_place_with_pwrite(
    attach: Any, key: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """About files: values with a file of their own (at most its capacity, 6112 bytes here,
    so they go in place)."""
    monkeypatch.setattr(largevars, "MAX_MAPPINGS", 0)  # every write finds no room to map
    monkeypatch.setattr(largevars, "_ADMIT_AFTER", 10**9)
    seg = attach(key, 1 << 20)
    seg[1] = large("first")
    path = os.path.join(seg.stats()["location"], "1")
    inode = os.stat(path).st_ino
    for round_no in range(5):  # both slots, more than once
        seg[1] = f"value {round_no}" * (600 + round_no)
        assert seg[1] == f"value {round_no}" * (600 + round_no)
    assert os.stat(path).st_ino == inode and not seg._backend._large.vars
    assert seg.stats()["used"] == len(seg._encode("value 4" * 604))
    seg[1] = os.urandom(50_000)  # too big for the slot: a new file, through the mapped path
    assert os.stat(path).st_ino != inode
    with seg.view(1) as viewed:  # viewed: never in place
        inode = os.stat(path).st_ino
        seg[1] = b"smaller" * 1000
        assert os.stat(path).st_ino != inode and len(viewed) == 50_000
    assert seg[1] == b"smaller" * 1000


def test_dead_writer_litter_is_cleaned_on_attach(attach: Any, key: int) -> None:
    """What a dead writer may leave: a temporary file, an index it built and never published,
    a file of its own renamed into place and never in the index; and wrong counts."""
    seg = attach(key, 1 << 20)
    seg[1] = "x"
    location = seg.stats()["location"]
    clean = sorted(os.listdir(location))
    for name in (".tmp-999999-0", ".index-7", "9"):
        with open(os.path.join(location, name), "wb") as litter:
            litter.write(b"half a value")
    meta = os.path.join(location, segdir.META_NAME)
    fd = os.open(meta, os.O_RDWR)
    try:  # what a writer killed between setting and clearing DIRTY leaves
        state = int.from_bytes(os.pread(fd, 8, 8 * 5), "little")
        os.pwrite(fd, (state | segdir.DIRTY).to_bytes(8, "little"), 8 * 5)
        os.pwrite(fd, (12345).to_bytes(8, "little"), 8 * 6)  # a wrong "used" count
    finally:
        os.close(fd)
    fresh = attach(key)
    assert sorted(os.listdir(location)) == clean
    assert {segdir.NOTIFY_NAME, segdir.META_NAME, segdir.VIEWS_NAME, ".index-0"} < set(clean)
    assert fresh.stats()["used"] == seg.stats()["used"] < 100
    assert fresh[1] == "x"


def test_waiters_are_unregistered(seg: shmfs.Segment) -> None:
    location = seg.stats()["location"]
    for _ in range(3):
        with pytest.raises(shmfs.WaitTimeout):
            seg.wait(1, timeout=0.01)
    with open(f"{location}/.segment", "rb") as meta:
        words = meta.read(8 * 12)
    assert int.from_bytes(words[88:96], "little") == 0  # the WAITERS word


def test_writer_dying_between_publish_and_retire(attach: Any, key: int) -> None:
    """A writer killed after renaming a new file into place but before retiring the old one
    leaves readers' cached mappings on a file no longer in the segment; the next access
    repairs that, and every handle drops its stale mappings."""
    reader = attach(key, 1 << 20)
    writer = attach(key)
    writer[1] = large("old")  # a file of its own: only those are replaced by rename
    assert reader[1] == reader[1] == large("old")  # the reader now maps the old file

    def die(self: Any, *, scrub: bool = True) -> None:
        raise KeyboardInterrupt  # stands for SIGKILL: nothing after this point runs

    with (
        mock.patch("shmfs.backends.tmpfs.largefile.VarFile.retire_and_scrub", die),
        pytest.raises(KeyboardInterrupt),
    ):
        writer[1] = "new, and too big for the old slot" * 200
    assert reader[1] == "new, and too big for the old slot" * 200
    assert reader.stats()["variables"] == 1


_BIG = 1 << 20
_BODY = HEADER_SIZE + 24 + 7  # variable header, frame header, then PROTO 5 + BINBYTES + length


@pytest.mark.parametrize(
    "offset",
    [
        HEADER_SIZE + 24 + 3,  # the pickled length
        _BODY + 100,  # inside the first checked 4 KiB of the value
        _BODY + _BIG - 100,  # inside the last checked 4 KiB
        _BODY + _BIG,  # pickle's STOP opcode
    ],
)
def test_large_bytes_read_in_one_copy_still_checked(attach: Any, key: int, offset: int) -> None:
    """A large ``bytes`` is copied out of the mapping straight into the returned object (the
    frame is read in pieces around it); damage where the frame is checked is still caught."""
    seg = attach(key, 4 << 20)
    value = os.urandom(_BIG)
    seg[1] = value
    got = attach(key)[1]
    assert type(got) is bytes and got == value
    _damage(seg, 1, offset, b"\xa5")
    with pytest.raises(shmfs.CorruptSegment):
        attach(key)[1]


@pytest.mark.parametrize(
    "value",
    [
        bytearray(os.urandom(_BIG)),  # a pickle of a bytearray is not a bare bytes
        os.urandom(_BIG // 2).hex(),  # a large str
        [os.urandom(_BIG // 4), b"second"],  # bytes inside a container
        os.urandom(1 << 16),  # at the checksum limit: checked whole, not split
    ],
    ids=["bytearray", "str", "list", "64KiB"],
)
def test_large_values_that_are_not_bare_bytes(attach: Any, key: int, value: Any) -> None:
    seg = attach(key, 4 << 20)
    seg[1] = value
    got = attach(key)[1]
    assert type(got) is type(value) and got == value


def test_large_bytes_in_a_signed_segment(attach: Any, key: int) -> None:
    """Signed frames are verified whole, never split; an unsigned large bytes planted in a
    signed segment is refused like any unsigned value."""
    value = os.urandom(_BIG)
    signer = attach(key, 4 << 20, secret=b"k1")
    signer[1] = value
    assert signer[1] == value
    attach(key)[2] = value
    with pytest.raises(shmfs.UnsafeSegment):
        signer[2]


def test_large_bytes_written_in_pieces(attach: Any, key: int) -> None:
    """A large bytes value goes into its file as the frame's pieces (never joined): in a new
    file, then in place over both slots, and signed."""
    seg = attach(key, 8 << 20)
    path = os.path.join(seg.stats()["location"], "1")
    values = [os.urandom(_BIG) for _ in range(3)]
    seg[1] = values[0]  # a new file
    inode = os.stat(path).st_ino
    for value in values[1:]:  # in place, slot 1 then slot 0
        seg[1] = value
        assert attach(key)[1] == value
    assert os.stat(path).st_ino == inode
    signed = attach(key, secret=b"k")
    signed[2] = values[0]
    assert signed[2] == values[0]


def _set_state(seg: shmfs.Segment, state: int) -> None:
    fd = os.open(os.path.join(seg.stats()["location"], segdir.META_NAME), os.O_WRONLY)
    try:
        os.pwrite(fd, state.to_bytes(8, "little"), 8 * segdir.STATE)
    finally:
        os.close(fd)


def test_readers_repair_only_after_a_writer_that_is_gone(attach: Any, key: int) -> None:
    """DIRTY carries the writer's pid: a reader leaves a live writer's change alone (no lock
    attempt on every get), and repairs at once after a writer that is gone."""
    seg = attach(key, 1 << 20)
    seg[1] = "x"
    litter = os.path.join(seg.stats()["location"], ".tmp-999999-0")
    open(litter, "wb").close()  # what the writer's death would leave
    reader = attach(key)
    _set_state(seg, segdir.DIRTY | os.getpid() << 32)  # a live writer, mid-change
    assert reader[1] == "x" and os.path.exists(litter)
    gone = subprocess.Popen(["true"])
    gone.wait()
    _set_state(seg, segdir.DIRTY | gone.pid << 32)
    assert reader[1] == "x" and not os.path.exists(litter)


def test_a_miss_is_remembered_until_the_segment_changes(
    attach: Any, key: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An absent index is looked for once, not on every get, until a write or removal (in any
    process) bumps the segment's generation; a destroyed segment is still reported."""
    seg, other = attach(key), attach(key)
    seg[1] = "present"
    assert seg.get(5, None) is None
    opened = []
    real_open = os.open
    monkeypatch.setattr(
        os, "open", lambda *args, **kw: opened.append(args[0]) or real_open(*args, **kw)
    )
    assert seg.get(5, None) is None and 5 not in seg
    assert opened == []  # remembered
    other[5] = "now here"
    assert seg[5] == "now here"
    del other[5]
    assert seg.get(5, None) is None
    other.destroy()
    with pytest.raises(shmfs.SegmentNotFound):
        seg.get(5, None)


def test_a_remembered_miss_does_not_hide_what_a_dead_writer_published(
    attach: Any, key: int
) -> None:
    """A writer that died between publishing a value in the index and bumping the generation:
    the reader that repairs after it forgets every remembered miss, and finds the value."""
    seg, writer = attach(key), attach(key)
    seg[1] = "x"
    assert seg.get(7, None) is None  # remembered as absent
    backend = writer._backend
    gone = subprocess.Popen(["true"])
    gone.wait()
    frame = shmfs.frame.encode(shmfs.codecs.get_codec("pickle"), "left")
    backend.acquire(None)
    try:  # the dead writer's steps, up to the publication (no counts, no bump)
        with (
            mock.patch.object(backend, "_changed", side_effect=KeyboardInterrupt),
            pytest.raises(KeyboardInterrupt),  # stands for SIGKILL right after publishing
        ):
            backend.write(7, frame)
        _set_state(writer, segdir.DIRTY | gone.pid << 32)
    finally:
        backend.release()
    assert seg[7] == "left"
    assert seg.stats()["variables"] == 2  # recounted


def test_a_file_renamed_into_place_is_not_read_before_the_index_names_it(
    attach: Any, key: int
) -> None:
    """A variable moving from a slot to a file of its own: the writer renames the new file into
    place, then publishes it in the index. A reader whose lookup is stale (it found LARGE for an
    earlier value, then slept) opens the file by name and may find the unpublished one: it must
    look again, not return a value newer than the one the index names (which its next read
    would then go back to)."""
    reader, writer = attach(key, 1 << 22), attach(key)
    reader[1] = "published, in a slot"
    backend = writer._backend
    backend.acquire(None)
    try:
        with (
            mock.patch.object(backend, "_publish", side_effect=KeyboardInterrupt),
            pytest.raises(KeyboardInterrupt),  # the writer, paused between rename and publish
        ):
            backend.write(1, shmfs.frame.encode(shmfs.codecs.get_codec("pickle"), large("next")))
        _set_state(writer, 0)  # as it is while that writer lives and works on
        assert os.path.exists(var_path(reader, 1))  # renamed into place, not in the index
        index_type = type(reader._backend._index)
        real_find = index_type.find
        stale = iter([(tmpfs.layout.LOC_LARGE, 0)])  # the reader's first lookup is stale

        def find(self: Any, wanted: int) -> tuple[int, int]:
            return next(stale, None) or real_find(self, wanted)

        with mock.patch.object(index_type, "find", find):
            data = reader._backend.read(1)
        assert data is not None
        codec, payload = shmfs.frame.decode(data)
        assert codec.decode(payload) == "published, in a slot"
        _set_state(writer, segdir.DIRTY)  # the writer's death: the next lock holder tidies
    finally:
        backend.release()
    assert reader[1] == "published, in a slot"
    assert not os.path.exists(var_path(reader, 1))


def test_stats_say_where_the_bytes_go(seg: shmfs.Segment) -> None:
    """``stats()["storage"]``: bytes of slab, index and large files, and how many slot bytes
    hold a value, so ``shmfs stat`` shows the overhead and what churn left unused."""
    for index in range(1000):
        seg[index] = "v" * 100
    seg[5000] = large("big")
    storage = seg.stats()["storage"]
    slot = tmpfs.layout.CLASSES[tmpfs.layout.class_for(len(_frame_of("v" * 100)) + 16)]
    assert storage["slot_bytes_in_use"] == 1000 * slot
    assert storage["slabs"] >= storage["slot_bytes_in_use"]
    assert storage["slot_bytes_unused"] == storage["slabs"] - storage["slot_bytes_in_use"]
    assert storage["index"] > 0 and storage["large"] >= len(large("big"))
    for index in range(0, 1000, 2):
        del seg[index]
    after = seg.stats()["storage"]
    assert after["slot_bytes_in_use"] == 500 * slot
    assert after["slot_bytes_unused"] == storage["slot_bytes_unused"] + 500 * slot


def _frame_of(value: Any) -> bytes:
    return bytes(shmfs.frame.encode(shmfs.codecs.get_codec("cloudpickle"), value))


def test_mappings_grow_with_slab_files_not_variables(attach: Any, key: int) -> None:
    """A process that reads 100,000 small variables of a segment maps its slab files and its
    index once each, and keeps no descriptor open for them."""
    seg = attach(key, 1 << 26)
    for index in range(100_000):
        seg[index] = f"{index:08d}".ljust(100, "v")
    reader = attach(key)
    fds = len(os.listdir("/proc/self/fd"))
    for index in range(0, 100_000, 7):
        assert reader[index].startswith(f"{index:08d}")
    location = reader.stats()["location"]
    with open("/proc/self/maps", encoding="ascii") as maps:
        mapped = {line.split()[-1] for line in maps if location in line}
    files = {os.path.join(location, name) for name in os.listdir(location)}
    slabs = {path for path in files if "/.slab-" in path}
    # Two handles (writer and reader) of one process; 100,000 variables of one class take a
    # few dozen slab files.
    assert mapped <= files and slabs <= mapped and len(slabs) < 40
    if hotpath.maps_without_descriptors():  # else mmap keeps one per file (Python < 3.13)
        assert len(os.listdir("/proc/self/fd")) <= fds
