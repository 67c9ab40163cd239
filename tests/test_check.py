"""Damage, diagnosed and repaired: real bytes are damaged where ``docs/tmpfs-format.md`` and
``shmfs/backends/sysv/layout.py`` say they lie, and the errors, ``shmfs.check`` and
``shmfs.destroy`` are held to what they promise (the README's CLI section, ``shmfs check``).

Backend-specific by nature (each damages its backend's own bytes): tmpfs with and without the
C fast path, sysv through a raw attachment, redis through the server.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

import shmfs
from shmfs.backends.sysv import ipc
from shmfs.backends.tmpfs import layout as L
from shmfs.backends.tmpfs.largefile import HEADER_SIZE
from tests.tmpfs_files import large, pwrite, slot_of, var_path

SLOT_FRAME = L.SLOT_HEADER  # a slot's frame starts after its seal and index words
CHUNK = 40 + 24  # the first PHP chunk's data: after the header and the chunk's own header


@pytest.fixture
def tmpfs(root: str, key: int, tmpfs_backend: str) -> Iterator[shmfs.Segment]:
    """A tmpfs segment with small values at 1..5 and a large one at 10."""
    seg = shmfs.attach(key, 1 << 20, backend=tmpfs_backend, root=root)
    for index in range(1, 6):
        seg[index] = f"value {index} long enough to damage"
    seg[10] = large("big")
    try:
        yield seg
    finally:
        seg.detach()
        remove(key, backend="tmpfs", root=root)


def remove(key: int, *, backend: str, root: str | None) -> None:
    """Destroy what a test left, as a handle does where it attaches, else by key."""
    try:
        shmfs.attach(key, backend=backend, root=root).destroy()
    except shmfs.CorruptSegment:
        shmfs.destroy(key, backend=backend, root=root)
    except shmfs.SegmentNotFound:
        pass


def damage_slot(seg: shmfs.Segment, index: int, at: int, data: bytes) -> tuple[str, int]:
    path, offset, _ = slot_of(seg, index)
    pwrite(path, data, offset + at)
    return path, offset


# ----------------------------------------------------------------- errors say where


def test_a_damaged_slot_names_key_index_file_and_offset(tmpfs: shmfs.Segment, key: int) -> None:
    path, offset = damage_slot(tmpfs, 2, SLOT_FRAME + 30, b"\xff\xfe")
    with pytest.raises(shmfs.CorruptSegment) as info:
        tmpfs.get(2)
    found = info.value
    assert (found.key, found.index, found.file, found.offset) == (key, 2, path, offset + 16)
    assert f"segment {key} index 2" in str(found) and path in str(found)


@pytest.mark.parametrize(("at", "data"), [(0, b"NOTSHMFS"), (HEADER_SIZE + 30, b"\xff\xfe")])
def test_a_damaged_large_value_names_its_file(
    tmpfs: shmfs.Segment, key: int, at: int, data: bytes
) -> None:
    pwrite(var_path(tmpfs, 10), data, at)
    with pytest.raises(shmfs.CorruptSegment) as info:
        tmpfs.get(10)
    found = info.value
    assert (found.key, found.index, found.file) == (key, 10, var_path(tmpfs, 10))
    assert found.offset is not None and str(found.offset) in str(found)


# ---------------------------------------------------- damaged variables can be cleared


@pytest.mark.parametrize(
    ("where", "at", "data"),
    [
        ("slot", SLOT_FRAME + 30, b"\xff\xfe"),  # checksum
        ("slot", SLOT_FRAME, b"\0\0\0\0"),  # frame header
        ("slot", 0, (0xFFFF).to_bytes(2, "little")),  # the seal's length
        ("file", 0, b"NOTSHMFS"),  # the variable file's header
        ("file", HEADER_SIZE + 30, b"\xff\xfe"),  # checksum
    ],
)
@pytest.mark.parametrize("clear", ["put small", "put large", "remove"])
def test_a_damaged_variable_is_present_and_can_be_replaced_or_removed(
    tmpfs: shmfs.Segment, where: str, at: int, data: bytes, clear: str
) -> None:
    index = 2 if where == "slot" else 10
    if where == "slot":
        damage_slot(tmpfs, index, at, data)
    else:
        pwrite(var_path(tmpfs, index), data, at)
    assert index in tmpfs
    if clear == "remove":
        tmpfs.remove(index)
        assert index not in tmpfs
    else:
        value = "new" if clear == "put small" else large("new")
        tmpfs[index] = value
        assert tmpfs[index] == value
    assert tmpfs[1] == "value 1 long enough to damage"
    # A damaged seal hides the old length, so the byte count may drift: check mends it and
    # drops nothing.
    mended = shmfs.check(tmpfs.key, root=tmpfs._spec["root"], repair=True)
    assert mended.clean and not mended.dropped


# ------------------------------------------------------------------------- check


def test_check_finds_repairs_and_lists_what_it_dropped(tmpfs: shmfs.Segment, root: str) -> None:
    key = tmpfs.key
    assert shmfs.check(key, root=root).status == 0
    damage_slot(tmpfs, 2, SLOT_FRAME + 30, b"\xff\xfe")
    pwrite(var_path(tmpfs, 10), b"NOTSHMFS", 0)
    found = shmfs.check(key, root=root)
    assert found.status == 1 and not found.clean
    assert {p.index for p in found.problems} >= {2, 10}
    for index in (2, 10):  # still damaged: a check without --repair changes nothing
        with pytest.raises(shmfs.CorruptSegment):
            tmpfs.get(index)
    repaired = shmfs.check(key, root=root, repair=True)
    assert (repaired.status, repaired.dropped, repaired.clean) == (2, [2, 10], True)
    assert shmfs.check(key, root=root).status == 0
    assert sorted(tmpfs) == [1, 3, 4, 5] and len(tmpfs) == 4
    assert tmpfs[3] == "value 3 long enough to damage"
    tmpfs[2] = "back"
    assert tmpfs[2] == "back"


def test_a_damaged_slab_file_is_renewed_in_place_for_live_handles(
    tmpfs: shmfs.Segment, root: str
) -> None:
    """A slab file is never replaced (handles keep their mappings of it), so the repair of a
    damaged one rewrites it in place: what a live handle stores there, others read."""
    path, _ = damage_slot(tmpfs, 2, 0, b"")
    pwrite(path, b"NOTASLAB", 0)  # the slab file's magic
    found = shmfs.check(tmpfs.key, root=root)
    assert found.status == 1 and {p.index for p in found.problems} >= {1, 2, 3, 4, 5}
    repaired = shmfs.check(tmpfs.key, root=root, repair=True)
    assert (repaired.dropped, repaired.clean) == ([1, 2, 3, 4, 5], True)
    again = "value 1 stored after repair"  # the same slot class: the renewed file
    tmpfs[1] = again
    assert slot_of(tmpfs, 1)[0] == path
    with shmfs.attach(tmpfs.key, root=root) as other:
        assert other[1] == again
        assert sorted(other) == [1, 10]
    assert shmfs.check(tmpfs.key, root=root).status == 0


def _meta(seg: shmfs.Segment, word: int, value: bytes) -> None:
    location = os.path.join(seg._spec["root"], str(seg.key))
    pwrite(os.path.join(location, ".segment"), value, word * 8)


def test_damaged_metadata_is_listed_flagged_and_repaired_from_the_slabs(
    tmpfs: shmfs.Segment, root: str
) -> None:
    key = tmpfs.key
    _meta(tmpfs, L.M_INDEX_GEN, (77).to_bytes(8, "little"))  # names an index that is not there
    _meta(tmpfs, L.M_MAGIC, b"XXXXXXXX")
    tmpfs.detach()
    (listed,) = shmfs.segments(root=root)
    assert listed["key"] == key and "magic" in listed["damaged"]
    with pytest.raises(shmfs.CorruptSegment) as info:
        shmfs.attach(key, root=root)
    assert (info.value.key, info.value.offset) == (key, 0)
    assert info.value.file == os.path.join(root, str(key), ".segment")
    assert shmfs.check(key, root=root).status == 1
    repaired = shmfs.check(key, root=root, repair=True)
    assert (repaired.status, repaired.dropped, repaired.clean) == (0, [], True)
    with shmfs.attach(key, root=root) as seg:
        assert sorted(seg) == [1, 2, 3, 4, 5, 10]
        assert seg[10] == large("big") and seg[5] == "value 5 long enough to damage"
    (listed,) = shmfs.segments(root=root)
    assert listed["damaged"] is None


def test_a_segment_with_damaged_metadata_is_removable(tmpfs: shmfs.Segment, root: str) -> None:
    _meta(tmpfs, L.M_MAGIC, b"XXXXXXXX")
    tmpfs.detach()
    shmfs.destroy(tmpfs.key, root=root)
    assert shmfs.segments(root=root) == []
    assert os.listdir(root) == []


# -------------------------------------------------------------------------- sysv


@pytest.fixture
def sysv(key: int, sysv_paths: str) -> Iterator[shmfs.Segment]:
    """A sysv segment (pickled values, framed) with values at 1..4."""
    del sysv_paths
    seg = shmfs.attach(key, 10000, backend="sysv", codec="pickle")
    for index in range(1, 5):
        seg[index] = f"value {index} long enough to damage"
    try:
        yield seg
    finally:
        seg.detach()
        remove(key, backend="sysv", root=None)


def poke(key: int, offset: int, data: bytes) -> None:
    attachment = ipc.Attachment(ipc.shmget(key, 0, 0), 1024)
    try:
        attachment.view[offset : offset + len(data)] = data
    finally:
        attachment.detach()


@pytest.mark.parametrize(("at", "data"), [(30, b"\xff\xfe"), (4, b"\x09")])  # checksum, header
def test_sysv_damaged_value_is_named_and_clearable(
    sysv: shmfs.Segment, key: int, at: int, data: bytes
) -> None:
    poke(key, CHUNK + at, data)
    with pytest.raises(shmfs.CorruptSegment) as info:
        sysv.get(1)
    found = info.value
    assert (found.key, found.index, found.offset) == (key, 1, 40)
    assert 1 in sysv
    sysv[1] = "new"
    assert sysv[1] == "new"
    sysv.remove(1)
    assert 1 not in sysv and sysv[2] == "value 2 long enough to damage"


def test_sysv_check_repairs_values_and_header(sysv: shmfs.Segment, key: int) -> None:
    poke(key, CHUNK + 30, b"\xff\xfe")
    found = shmfs.check(key, backend="sysv")
    assert found.status == 1 and [(p.index, p.offset) for p in found.problems] == [(1, 40)]
    repaired = shmfs.check(key, backend="sysv", repair=True)
    assert (repaired.status, repaired.dropped) == (2, [1])
    assert shmfs.check(key, backend="sysv").status == 0
    assert sorted(sysv) == [2, 3, 4]
    poke(key, 32, (1 << 40).to_bytes(8, "little"))  # the header's total
    (listed,) = [s for s in shmfs.segments(backend="sysv") if s["key"] == key]
    assert "total" in listed["damaged"]
    repaired = shmfs.check(key, backend="sysv", repair=True)
    assert (repaired.status, repaired.dropped, repaired.clean) == (0, [], True)
    assert sorted(sysv) == [2, 3, 4] and sysv[4] == "value 4 long enough to damage"


def test_sysv_damaged_header_is_removable(sysv: shmfs.Segment, key: int) -> None:
    poke(key, 32, (1 << 40).to_bytes(8, "little"))
    sysv.detach()
    shmfs.destroy(key, backend="sysv")
    assert [s for s in shmfs.segments(backend="sysv") if s["key"] == key] == []


# ------------------------------------------------------------------------- redis


def test_redis_check_verifies_frames(redis_url: str, key: int) -> None:
    """On redis the server keeps the structure: check verifies each value's frame, and
    repairing removes the values that fail."""
    import redis  # noqa: PLC0415  # only this test needs it

    seg = shmfs.attach(key, backend="redis", root=redis_url)
    try:
        seg[1], seg[2] = "one", "two"
        client: Any = redis.Redis.from_url(redis_url)
        name = f"shmfs:{{{key}}}:vars"
        stored = client.hget(name, "1")
        client.hset(name, "1", stored[:-1] + bytes([stored[-1] ^ 0xFF]))
        client.close()
        found = shmfs.check(key, backend="redis", root=redis_url)
        assert found.status == 1 and [p.index for p in found.problems] == [1]
        repaired = shmfs.check(key, backend="redis", root=redis_url, repair=True)
        assert (repaired.status, repaired.dropped, repaired.clean) == (2, [1], True)
        assert sorted(seg) == [2]
    finally:
        seg.destroy()


@pytest.mark.parametrize("version", [1, 2])
def test_a_segment_of_an_earlier_format_says_how_to_remove_it_and_is_removed(
    tmpfs: shmfs.Segment, key: int, root: str, version: int
) -> None:
    """Format 2 locked the metadata file, format 3 a writers-only lock file: the two cannot
    share a segment, so an earlier one is refused by name, listed, and ``shmfs rm`` takes it."""
    meta = os.path.join(root, str(key), ".segment")
    pwrite(meta, version.to_bytes(8, "little"), L.M_VERSION * 8)
    with pytest.raises(shmfs.CorruptSegment, match=f"tmpfs format {version}.*shmfs rm --key"):
        shmfs.attach(key, root=root)
    (listed,) = [info for info in shmfs.segments(root=root) if info["key"] == key]
    assert listed["damaged"] == f"its metadata says format version {version}"
    shmfs.destroy(key, root=root)
    assert not os.path.exists(os.path.join(root, str(key)))
