"""Recovery after a writer that died mid-change: make the segment whole again from its index.

Every change is ordered so that the index names a whole value at every instant (``slabs.py``,
``index.py``); what a dead writer can leave behind is only what nobody is named by: a slot it
took and had not published, or had unpublished and not yet freed; a file of its own renamed into
place but not yet in the index; a new index built but not published; temporary files; and
counts (used bytes, variables, free lists) that no longer match. The next process to take the
segment lock, or a reader that finds the writer's pid dead, runs :func:`recover`: it keeps what
the index names, drops index entries whose slot does not hold their variable (damage), frees and
zeroes every other slot, and recounts.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from shmfs.backends.tmpfs import layout as L
from shmfs.backends.tmpfs import segdir as sd
from shmfs.backends.tmpfs.index import Index, index_name
from shmfs.backends.tmpfs.slabs import Slabs, location
from shmfs.errors import CorruptSegment

__all__ = ["recover"]

_SIGN = 1 << 63


def _signed(key: int) -> int:
    return key - (1 << 64) if key & _SIGN else key


def recover(
    dir_fd: int,
    meta: memoryview,
    index: Index,
    slabs: Slabs,
    large_length: Callable[[int], int | None],
) -> None:
    """Rebuild counts and free lists from ``index`` and remove litter. Segment lock held, the
    segment DIRTY; ``large_length`` gives a large variable's length, ``None`` without a file.

    Raises:
        OSError: from the filesystem.
        CorruptSegment: a slab file the bump words name is missing or damaged.
    """
    current = index_name(int(meta[L.M_INDEX_GEN]))
    names = os.listdir(dir_fd)
    for name in names:
        if name.startswith(".tmp-") or (name.startswith(".index-") and name != current):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)
    used = count = 0
    large: set[int] = set()
    live: dict[int, set[int]] = {}
    words = index.words
    for word, key, loc in list(index.live()):
        length = _length(key, loc, slabs, large_length)
        if length is None:
            words[word] = L.LOC_TOMB  # names nothing whole: damage, dropped
            continue
        used += length
        count += 1
        if loc == L.LOC_LARGE:
            large.add(_signed(key))
        else:
            live.setdefault((loc >> L.LOC_CLASS_SHIFT) - 1, set()).add(loc)
    index.recount()
    for name in names:
        found = sd.index_of(name)
        if found is not None and found not in large:
            sd.scrub_file(dir_fd, name, None)  # renamed into place, never published
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)
    for number in range(L.NCLASSES):
        _rebuild_free_list(meta, slabs, number, live.get(number, set()))
    meta[L.M_USED] = used
    meta[L.M_COUNT] = count


def _length(
    key: int, loc: int, slabs: Slabs, large_length: Callable[[int], int | None]
) -> int | None:
    """The length of the value a live bucket names, or ``None`` if it names nothing whole."""
    if loc == L.LOC_LARGE:
        return large_length(_signed(key))
    try:
        return slabs.length(loc, key)
    except CorruptSegment:
        return None


def _rebuild_free_list(meta: memoryview, slabs: Slabs, number: int, live: set[int]) -> None:
    """Chain every slot of class ``number`` the index does not name, ascending, zeroing any
    that holds bytes."""
    head = L.M_CLASSES + 2 * number
    bump = int(meta[head + 1])
    free = 0
    if bump:
        last, next_slot = bump >> 32, bump & 0xFFFF_FFFF
        size = L.CLASSES[number]
        zeros = bytes(size)
        for file in range(last, -1, -1):
            slab = slabs.file(number, file)
            words, mm = slab.words, slab.mm
            limit = min(next_slot, slab.slots) if file == last else slab.slots
            for slot in range(limit - 1, -1, -1):
                loc = location(number, file, slot)
                if loc in live:
                    continue
                start = L.SLAB_HEADER + slot * size
                if mm[start : start + size] != zeros:
                    words[start // L.WORD] = 0  # the seal first: a reader may be copying it
                    mm[start : start + size] = zeros
                words[start // L.WORD + 1] = free
                free = loc
    meta[head] = free
