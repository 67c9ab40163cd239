"""Every number of the tmpfs format (version 2), in one place, for Python and C alike.

``shmfs/_hot_c/layout.h`` is generated from this module (:func:`header_text`) by ``setup.py`` at
every build of the C module, and a test holds the committed header equal to it, so the C fast
path and the Python path cannot disagree about a single offset. This module imports nothing of
shmfs, so ``setup.py`` can load it before shmfs is installed.

The files of a segment directory, and what each holds (``docs/tmpfs-format.md`` draws them):

``.segment``
    The metadata page: 512 little-endian 8-byte words (``M_*`` below). The segment lock is an
    flock on it. Words 80 on hold, for each slot class, the head of its free list and where its
    bump allocation stands.
``.index-<g>``
    The index: a header of ``IX_HEADER_WORDS`` words, then ``2 ** shift`` buckets of two words,
    ``(variable index, location)``, found by linear probing from a Fibonacci hash. ``g`` is the
    metadata's ``M_INDEX_GEN``: a writer that grows the index builds ``.index-<g+1>`` whole,
    then publishes it with one store of that word.
``.slab-<class>-<n>``
    Slots of one size class. File ``n`` of a class has ``slab_size(n)`` bytes: a header of
    ``SLAB_HEADER`` bytes, then slots. A slot is two words, ``seal`` (``stamp << 16 | length``;
    zero while free) and the variable index (a free slot: the next free slot's location), then
    ``length`` bytes of frame.
``<index>``
    A variable whose frame needs more than ``SLOT_MAX`` bytes of slot has a file of its own
    (``largefile.py``), as every variable did in format 1; its index entry says ``LARGE``.
"""

from __future__ import annotations

from typing import Final

PAGE: Final = 4096
WORD: Final = 8
MASK64: Final = (1 << 64) - 1

# ---------------------------------------------------------------- the metadata page
META_MAGIC: Final = int.from_bytes(b"SHMFSSEG", "little")
META_VERSION: Final = 3
M_MAGIC: Final = 0
M_VERSION: Final = 1
M_KEY: Final = 2
M_SIZE: Final = 3
M_PERM: Final = 4
#: DESTROYED and DIRTY bits; a live writer's pid in the high half while DIRTY.
M_STATE: Final = 5
#: Bytes of frames stored (what ``size`` bounds).
M_USED: Final = 6
M_COUNT: Final = 7
M_CREATED: Final = 8
M_CREATOR: Final = 9
#: Bumped after every completed change (waiters, and remembered misses, key on it).
M_GENERATION: Final = 10
M_WAITERS: Final = 11
#: Bumped by every recovery after a dead writer: handles drop what they cached.
M_RECOVERIES: Final = 12
M_VIEWS: Final = 13
#: Which ``.index-<g>`` is current.
M_INDEX_GEN: Final = 14
#: The last stamp a slot was sealed with (each write takes the next).
M_STAMP: Final = 15
M_WAITER_TABLE: Final = 16
M_WAITER_SLOTS: Final = 64
#: Per slot class: the first free slot's location (0: none), then the bump word
#: (``file << 32 | next slot number`` in the class's last file).
M_CLASSES: Final = 80
M_WORDS: Final = PAGE // WORD

STATE_DESTROYED: Final = 1
STATE_DIRTY: Final = 2

# ---------------------------------------------------------------------- the index
IX_MAGIC: Final = int.from_bytes(b"SHMFSIDX", "little")
IX_VERSION: Final = 1
IX_W_MAGIC: Final = 0
IX_W_VERSION: Final = 1
#: log2 of the number of buckets.
IX_W_SHIFT: Final = 2
#: Buckets that hold a key, removed ones (tombstones) included: what decides growth.
IX_W_FILLED: Final = 3
IX_W_GEN: Final = 4
IX_HEADER_WORDS: Final = 8
IX_MIN_SHIFT: Final = 6
IX_MAX_SHIFT: Final = 40
#: The index grows once filled buckets pass this fraction (tombstones count: probing walks them).
IX_FILL_NUM: Final = 3
IX_FILL_DEN: Final = 4
#: Fibonacci hashing: the top ``shift`` bits of ``index * FIB`` pick the first bucket.
FIB: Final = 0x9E3779B97F4A7C15

#: A bucket's location word: never used (ends a probe), removed (probing goes on), or a value.
LOC_EMPTY: Final = 0
LOC_TOMB: Final = 1
LOC_LARGE: Final = 2
#: A slot's location: ``(class + 1) << LOC_CLASS_SHIFT | file << LOC_FILE_SHIFT | slot``.
LOC_CLASS_SHIFT: Final = 48
LOC_FILE_SHIFT: Final = 32
LOC_FILES: Final = 1 << 16
LOC_SLOTS: Final = 1 << 32

# ----------------------------------------------------------------------- the slabs
SLAB_MAGIC: Final = int.from_bytes(b"SHMFSLAB", "little")
SLAB_VERSION: Final = 1
SLAB_HEADER: Final = 64
SLAB_W_MAGIC: Final = 0
SLAB_W_VERSION: Final = 1
SLAB_W_CLASS: Final = 2
SLAB_W_FILE: Final = 3
#: A class's first file is one page; each next one doubles, up to this.
SLAB_MAX: Final = 2 * 1024 * 1024
#: The slot's own words before the frame: seal and variable index.
SLOT_HEADER: Final = 16
SEAL_LENGTH_BITS: Final = 16
SEAL_LENGTH_MASK: Final = (1 << SEAL_LENGTH_BITS) - 1
#: The largest slot; a frame that needs a bigger one gets a file of its own.
SLOT_MAX: Final = PAGE


def _classes() -> tuple[int, ...]:
    """Slot sizes: 16-byte steps to 256, then four steps per doubling up to a page, so a
    slot wastes at most 1/8 of its size beyond its 16-byte rounding."""
    sizes = list(range(32, 257, 16))
    step = 32
    while sizes[-1] < SLOT_MAX:
        sizes.extend(range(sizes[-1] + step, sizes[-1] * 2 + 1, step))
        step *= 2
    return tuple(size for size in sizes if size <= SLOT_MAX)


#: Slot size of each class, ascending.
CLASSES: Final = _classes()
NCLASSES: Final = len(CLASSES)
assert M_CLASSES + 2 * NCLASSES <= M_WORDS


def class_for(slot_length: int) -> int:
    """The smallest class whose slots hold ``slot_length`` bytes (a slot's header included);
    ``-1`` if none does."""
    if slot_length > SLOT_MAX:
        return -1
    if slot_length <= 256:
        return max(slot_length - 17, 0) // 16
    for number in range(15, NCLASSES):
        if CLASSES[number] >= slot_length:
            return number
    return -1  # unreachable: the last class is SLOT_MAX


def slab_size(number: int, file: int) -> int:
    """Bytes in class ``number``'s file ``file``: the first is the fewest pages that hold four
    slots, and each next one doubles, up to ``SLAB_MAX``."""
    first = PAGE * (1 + 4 * CLASSES[number] // PAGE)
    return min(first << min(file, 20), SLAB_MAX)


def slots_in(number: int, file: int) -> int:
    """How many slots class ``number``'s file ``file`` holds."""
    return (slab_size(number, file) - SLAB_HEADER) // CLASSES[number]


def header_text() -> str:
    """``shmfs/_hot_c/layout.h``, generated from this module."""
    names = [
        name
        for name, value in globals().items()
        if name.isupper() and isinstance(value, int) and not isinstance(value, bool)
    ]
    lines = [
        "/* The tmpfs format's numbers, generated from shmfs/backends/tmpfs/layout.py by setup.py",
        " * (python setup.py build_ext --inplace). Do not edit; tests/test_layout.py checks it. */",
        "#ifndef SHMFS_LAYOUT_H",
        "#define SHMFS_LAYOUT_H",
        "",
    ]
    lines += [f"#define {name} {globals()[name]}ULL" for name in names]
    lines.append(f"static const unsigned CLASSES[{NCLASSES}] = {{")
    lines += [f"    {size}," for size in CLASSES]
    lines += ["};", "", "#endif", ""]
    return "\n".join(lines)
