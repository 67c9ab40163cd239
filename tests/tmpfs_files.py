"""Where a tmpfs segment (format 3, ``shmfs/backends/tmpfs/layout.py``) keeps a variable's bytes,
for tests that damage, chown or observe them.

A value whose frame needs more than ``layout.SLOT_MAX`` bytes of slot has a file of its own,
named by its index; a smaller one lives in a slot of a ``.slab-<class>-<n>`` file.
"""

from __future__ import annotations

import os

import shmfs
from shmfs.backends.tmpfs import layout as L
from shmfs.backends.tmpfs.slabs import slab_name, split_location

#: Long enough that its frame gets a file of its own (frame + 16 > 4096 bytes).
LARGE = 5000


def large(text: str) -> str:
    """``text`` repeated past ``LARGE`` characters: a value with a file of its own."""
    return text * (LARGE // max(len(text), 1) + 1)


def directory(seg: shmfs.Segment) -> str:
    return str(seg.stats()["location"])


def var_path(seg: shmfs.Segment, index: int) -> str:
    """The file of a large variable."""
    return os.path.join(directory(seg), str(index))


def location(seg: shmfs.Segment, index: int) -> int:
    """The index's location word for ``index`` (``layout.LOC_*`` or a slot's)."""
    backend = seg._backend
    return int(backend._current_index().find(index & L.MASK64)[0])


def slot_of(seg: shmfs.Segment, index: int) -> tuple[str, int, int]:
    """``(path of the slab file, offset of the slot, slot size)`` of a small variable."""
    loc = location(seg, index)
    assert loc > L.LOC_LARGE, f"index {index} has no slot (location {loc:#x})"
    number, file, slot = split_location(loc)
    size = L.CLASSES[number]
    return os.path.join(directory(seg), slab_name(number, file)), L.SLAB_HEADER + slot * size, size


def slab_files(seg: shmfs.Segment) -> list[str]:
    return sorted(name for name in os.listdir(directory(seg)) if name.startswith(".slab-"))


def pwrite(path: str, data: bytes, offset: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)
