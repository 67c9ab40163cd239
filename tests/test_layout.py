"""The tmpfs format's numbers (``shmfs/backends/tmpfs/layout.py``) and its index
(``shmfs/backends/tmpfs/index.py``): the C header agrees with the Python module, size classes
are what their docstrings say, and the index finds, removes, reuses and grows."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

import shmfs
from shmfs import frame, hotpath, locking
from shmfs.backends.tmpfs import layout as L
from shmfs.backends.tmpfs.index import Index, create_index, index_name, shift_for

HEADER = Path(__file__).resolve().parent.parent / "shmfs" / "_hot_c" / "layout.h"


def test_the_c_header_is_generated_from_layout_py() -> None:
    """C and Python cannot disagree about a single offset: the header is the module's text."""
    regenerate = "run `python setup.py build_ext --inplace`, which writes it"
    assert HEADER.exists(), f"{HEADER} is missing: {regenerate}"
    assert HEADER.read_text(encoding="ascii") == L.header_text(), (
        f"{HEADER} differs from layout.py: {regenerate}"
    )


def test_class_for_is_the_smallest_class_that_fits() -> None:
    assert list(L.CLASSES) == sorted(set(L.CLASSES)) and L.CLASSES[-1] == L.SLOT_MAX
    for length in range(0, L.SLOT_MAX + 1):
        number = L.class_for(length)
        assert 0 <= number < L.NCLASSES, length
        assert L.CLASSES[number] >= length, length
        assert number == 0 or L.CLASSES[number - 1] < length, length
    for length in (L.SLOT_MAX + 1, L.SLOT_MAX + 16, 1 << 20):
        assert L.class_for(length) == -1


def test_classes_waste_at_most_an_eighth() -> None:
    for number in range(1, L.NCLASSES):
        smallest = L.CLASSES[number - 1] + 1  # the smallest slot length this class serves
        assert L.CLASSES[number] - (smallest + 15) // 16 * 16 <= L.CLASSES[number] // 8


@pytest.mark.parametrize("file", [0, 1, 5, 30])
def test_every_slab_file_holds_at_least_four_slots(file: int) -> None:
    for number in range(L.NCLASSES):
        size = L.slab_size(number, file)
        assert size % L.PAGE == 0 and size <= max(L.SLAB_MAX, L.slab_size(number, 0))
        assert L.slots_in(number, file) >= 4, (number, file)
        assert L.SLAB_HEADER + L.slots_in(number, file) * L.CLASSES[number] <= size
    assert L.M_CLASSES + 2 * L.NCLASSES <= L.M_WORDS


# ----------------------------------------------------------------------------- the index


@pytest.fixture
def dir_fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def _open(dir_fd: int, gen: int) -> Index:
    fd = os.open(index_name(gen), os.O_RDWR, dir_fd=dir_fd)
    try:
        return Index(fd, gen, writable=True)
    finally:
        os.close(fd)


def test_index_insert_find_tombstone_and_reuse(dir_fd: int) -> None:
    create_index(dir_fd, index_name(0), 0, L.IX_MIN_SHIFT, entries=iter([]), mode=0o600)
    index = _open(dir_fd, 0)
    try:
        keys = [1, 2, 3, (-1) & L.MASK64, 1 << 63, 0]
        for number, key in enumerate(keys):
            loc, word = index.find(key)
            assert loc == L.LOC_EMPTY
            index.insert(word, key, 100 + number)
        assert index.filled == len(keys)
        for number, key in enumerate(keys):
            assert index.find(key)[0] == 100 + number
        assert index.find(4)[0] == L.LOC_EMPTY
        loc, word = index.find(2)
        index.words[word] = L.LOC_TOMB  # a removal
        assert index.find(2)[0] == L.LOC_EMPTY
        assert all(index.find(key)[0] == 100 + n for n, key in enumerate(keys) if key != 2)
        assert index.filled == len(keys)  # a tombstone still counts: probes walk it
        loc, again = index.find(2)
        assert loc == L.LOC_EMPTY and again == word  # the removed bucket is reused
        index.insert(again, 2, 999)
        assert index.find(2)[0] == 999 and index.filled == len(keys)
        assert sorted(key for key, _ in index.entries()) == sorted(keys)
        assert sorted(loc for _, _, loc in index.live()) == sorted(
            [999] + [100 + n for n, key in enumerate(keys) if key != 2]
        )
    finally:
        index.close()


def test_index_colliding_keys_probe_past_each_other(dir_fd: int) -> None:
    """Keys that hash to one bucket: each found, a removed one in the middle of the chain
    does not end the probe."""
    shift = L.IX_MIN_SHIFT
    bucket = lambda key: ((key * L.FIB) & L.MASK64) >> (64 - shift)  # noqa: E731
    target = bucket(1)
    same = [key for key in range(1, 100_000) if bucket(key) == target][:5]
    create_index(dir_fd, index_name(0), 0, shift, entries=iter([]), mode=0o600)
    index = _open(dir_fd, 0)
    try:
        for key in same:
            index.insert(index.find(key)[1], key, 10 + key)
        index.words[index.find(same[1])[1]] = L.LOC_TOMB
        assert index.find(same[1])[0] == L.LOC_EMPTY
        for key in same[:1] + same[2:]:
            assert index.find(key)[0] == 10 + key
    finally:
        index.close()


def test_a_full_table_is_refused_not_probed_for_ever(dir_fd: int) -> None:
    """A damaged table with no empty bucket: the probe is bounded, ``CorruptSegment``."""
    create_index(dir_fd, index_name(0), 0, L.IX_MIN_SHIFT, entries=iter([]), mode=0o600)
    index = _open(dir_fd, 0)
    try:
        for bucket in range(index.buckets):
            index.words[L.IX_HEADER_WORDS + 2 * bucket] = 1_000_000 + bucket
            index.words[L.IX_HEADER_WORDS + 2 * bucket + 1] = L.LOC_LARGE
        with pytest.raises(shmfs.CorruptSegment):
            index.find(5)
    finally:
        index.close()


def test_create_index_holds_its_entries_and_fill_rule(dir_fd: int) -> None:
    entries = [(key * 7919, 1000 + key) for key in range(300)]
    shift = shift_for(len(entries))
    assert (1 << shift) >= 2 * len(entries)
    create_index(dir_fd, index_name(3), 3, shift, entries=iter(entries), mode=0o600)
    index = _open(dir_fd, 3)
    try:
        assert index.filled == len(entries) and not index.full()
        assert all(index.find(key)[0] == loc for key, loc in entries)
        assert sorted(index.entries()) == sorted(entries)
    finally:
        index.close()
    fd = os.open(index_name(3), os.O_RDONLY, dir_fd=dir_fd)
    try:
        with pytest.raises(shmfs.CorruptSegment):  # not the generation the metadata names
            Index(fd, 4, writable=False)
    finally:
        os.close(fd)


@pytest.fixture
def backend(tmpfs_backend: str) -> str:
    """The index tests through the public API run on tmpfs (with the C path and without)."""
    return tmpfs_backend


def test_the_index_grows_through_many_puts(seg: shmfs.Segment) -> None:
    """5,000 new indices (the index grows several times), read back; then half removed, and
    the rest still found, counted and listed in order; then the removed ones stored again."""
    location = seg.stats()["location"]
    keys = random.Random(7).sample(range(-(10**12), 10**12), 5000)
    for key in keys:
        seg[key] = key * 3
    assert all(seg[key] == key * 3 for key in keys)
    assert len(seg) == 5000 and list(seg) == sorted(keys)
    indexes = [name for name in os.listdir(location) if name.startswith(".index-")]
    assert len(indexes) == 1 and indexes[0] != ".index-0"  # grew, and the old ones are gone
    removed, kept = keys[::2], keys[1::2]
    for key in removed:
        del seg[key]
    assert len(seg) == len(kept) and list(seg) == sorted(kept)
    assert all(seg[key] == key * 3 for key in kept)
    assert all(key not in seg for key in removed)
    for key in removed:  # tombstones reused, or dropped by a growth
        seg[key] = -key
    assert len(seg) == 5000 and list(seg) == sorted(keys)
    assert all(seg[key] == (key * 3 if key in set(kept) else -key) for key in keys)


def test_growing_copies_the_same_table_in_c_and_in_python(dir_fd: int) -> None:
    """``create_index(copy_from=...)`` copies live entries in C where the module is built and
    in Python where not: the two files are byte for byte the same, tombstones left out."""
    rng = random.Random(3)
    keys = list({rng.getrandbits(64) for _ in range(3000)})
    create_index(dir_fd, index_name(0), 0, 13, mode=0o600)
    old = _open(dir_fd, 0)
    try:
        for n, key in enumerate(keys):
            loc, word = old.find(key)
            assert loc == L.LOC_EMPTY
            old.insert(word, key, (1 << L.LOC_CLASS_SHIFT) | n)
        for key in keys[::3]:
            old.words[old.find(key)[1]] = L.LOC_TOMB
        live = old.live_count()
        assert live == len(keys) - len(keys[::3])
        create_index(dir_fd, index_name(1), 1, shift_for(live), copy_from=old, mode=0o600)
        with hotpath.pure_python():
            create_index(dir_fd, index_name(2), 2, shift_for(live), copy_from=old, mode=0o600)
    finally:
        old.close()
    fast, slow = (_bytes(dir_fd, index_name(gen)) for gen in (1, 2))
    fast[L.IX_W_GEN * 8 : L.IX_W_GEN * 8 + 8] = slow[L.IX_W_GEN * 8 : L.IX_W_GEN * 8 + 8]
    assert fast == slow
    grown = _open(dir_fd, 1)
    try:
        assert grown.filled == live == grown.live_count()
        for n, key in enumerate(keys):
            expected = L.LOC_EMPTY if n % 3 == 0 else (1 << L.LOC_CLASS_SHIFT) | n
            assert grown.find(key)[0] == expected
    finally:
        grown.close()


def _bytes(dir_fd: int, name: str) -> bytearray:
    fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    try:
        return bytearray(os.pread(fd, 1 << 24, 0))
    finally:
        os.close(fd)


def test_the_lock_words_are_the_c_modules() -> None:
    """The C fast path reads a lock's state words (``locking.LockInterface``) by number."""
    if not hotpath.available():
        pytest.skip("the C module is not built")
    assert hotpath._hot.LOCK_WORDS == (locking.DEPTH, locking.FD, locking.FLAGS, locking.WORDS)


def test_the_split_checks_numbers_are_the_c_modules() -> None:
    """The C get checks a large bytes value's frame as frame.py does: over its ends alone."""
    if not hotpath.available():
        pytest.skip("the C module is not built")
    assert hotpath._hot.SPLIT_CHECK == (frame.FULL_CHECK_LIMIT, frame._EDGE)
