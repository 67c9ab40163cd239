"""The index: variable index -> location, an open-addressing hash table in a mapped file.

Why this shape. A lookup must be O(1) at a million variables and cost a reader no lock and no
system call, so the table lives in a mapped file every process shares. Linear probing from a
Fibonacci hash keeps a probe within one or two cache lines; buckets are two words, the variable
index and its location (``layout.LOC_*``).

Readers race writers without a lock, so each change is one aligned store that a reader sees
whole or not at all, and what a reader finds is checked again where it leads:

* insert: the key word is stored, then the location (a reader that sees the location sees the
  key; one that sees the old, empty location stops there and finds nothing, as before the
  insert);
* replace: one store of the location;
* remove: the location becomes ``LOC_TOMB``, which probes walk past; a later insert may reuse
  the bucket (key, then location), so a reader may pair a stale location with a new key, which
  is why a slot also names its variable (``slabs.py``) and readers check it.

The table never fills: past ``IX_FILL_NUM / IX_FILL_DEN`` of its buckets (tombstones included)
the writer builds a bigger one in a new file, whole, and publishes it with one store of the
metadata's ``M_INDEX_GEN``; readers check that word before and after a lookup, so a lookup in a
table that was replaced meanwhile is done again in the new one. Damage that would make a probe
run for ever (no empty bucket) is caught by bounding the probe to the table's size.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterable, Iterator
from typing import Final

from shmfs.backends.tmpfs import layout as L
from shmfs.backends.tmpfs.unmapped import check_allocated, is_unmapped, open_words
from shmfs.errors import CorruptSegment
from shmfs.hotpath import rehash

__all__ = ["Index", "create_index", "index_name", "shift_for"]

_H: Final = L.IX_HEADER_WORDS
_M64: Final = L.MASK64
_FIB: Final = L.FIB
_EMPTY, _TOMB = L.LOC_EMPTY, L.LOC_TOMB


def index_name(gen: int) -> str:
    """The file name of index generation ``gen``."""
    return f".index-{gen}"


def shift_for(live: int) -> int:
    """log2 of the buckets a new table for ``live`` entries gets: filled at most to half, so
    it takes as many inserts again before it grows."""
    shift = L.IX_MIN_SHIFT
    while (1 << shift) < 2 * live + 2:
        shift += 1
    return shift


def create_index(
    dir_fd: int,
    name: str,
    gen: int,
    shift: int,
    *,
    entries: Iterable[tuple[int, int]] = (),
    copy_from: Index | None = None,
    mode: int,
) -> None:
    """Write a complete index file ``name`` holding ``entries`` ((unsigned key, location)) and
    the live entries of ``copy_from`` (copied in C where the module is built).

    The caller renames it into place and publishes it; until then nobody sees it. The file is
    allocated with ``posix_fallocate`` before it is written, so a full tmpfs is an ``OSError``
    here and never a SIGBUS later.

    Raises:
        OSError: from the filesystem (ENOSPC included).
    """
    buckets = 1 << shift
    size = (_H + 2 * buckets) * L.WORD
    table = bytearray(size)
    words = memoryview(table).cast("Q")
    words[L.IX_W_MAGIC], words[L.IX_W_VERSION] = L.IX_MAGIC, L.IX_VERSION
    words[L.IX_W_SHIFT], words[L.IX_W_GEN] = shift, gen
    mask, down = buckets - 1, 64 - shift
    filled = 0
    if copy_from is not None:
        copied = rehash(copy_from.words, words) if copy_from.mapped else None
        if copied is None:
            entries = itertools.chain(copy_from.entries(), entries)
        else:
            filled = copied
    for key, loc in entries:
        bucket = ((key * _FIB) & _M64) >> down
        while words[_H + 2 * bucket + 1] != _EMPTY:
            bucket = (bucket + 1) & mask
        words[_H + 2 * bucket] = key
        words[_H + 2 * bucket + 1] = loc
        filled += 1
    words[L.IX_W_FILLED] = filled
    words.release()
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, mode, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)  # the umask must not decide who can read the segment
        os.posix_fallocate(fd, 0, size)
        view = memoryview(table)
        while view:
            view = view[os.pwrite(fd, view, size - len(view)) :]
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)
        raise
    os.close(fd)


class Index:
    """One mapped index file.

    Args:
        fd: An open descriptor of ``.index-<gen>``; the caller closes it.
        gen: The generation the metadata names it by.
        writable: Map it for writing (the segment lock must be held to write).
    """

    __slots__ = ("_down", "_mm", "buckets", "gen", "mapped", "mask", "words", "writable")

    def __init__(self, fd: int, gen: int, *, writable: bool) -> None:
        st = os.fstat(fd)
        size = st.st_size
        if size < (_H + (2 << L.IX_MIN_SHIFT)) * L.WORD:
            raise CorruptSegment(f"index file is {size} bytes, too short")
        check_allocated(st, "index file")
        # Mapped only if nobody else can shrink it (unmapped.py); keeps no descriptor then.
        self._mm, self.words = open_words(
            fd, st, size, writable=writable, name=f"index file {index_name(gen)}"
        )
        #: Whether it is mapped, so the C fast path may read it.
        self.mapped = not is_unmapped(self._mm)
        words = self.words
        shift = words[L.IX_W_SHIFT]
        if (
            words[L.IX_W_MAGIC] != L.IX_MAGIC
            or words[L.IX_W_VERSION] != L.IX_VERSION
            or words[L.IX_W_GEN] != gen
            or not L.IX_MIN_SHIFT <= shift <= L.IX_MAX_SHIFT
            or (_H + (2 << shift)) * L.WORD != size
        ):
            self.close()
            raise CorruptSegment("index file has a bad header (magic, version, generation or size)")
        self.gen = gen
        self.buckets = 1 << shift
        self.mask = self.buckets - 1
        self._down = 64 - shift
        self.writable = writable

    def find(self, key: int) -> tuple[int, int]:
        """``(location, word)`` of unsigned ``key``: the location is ``LOC_EMPTY`` if absent,
        and ``word`` is where its location word is (or would be inserted at).

        Raises:
            CorruptSegment: the table has no empty bucket to end the probe.
        """
        words, mask = self.words, self.mask
        bucket = ((key * _FIB) & _M64) >> self._down
        free = -1
        for _ in range(self.buckets):
            at = _H + 2 * bucket
            loc = words[at + 1]
            if loc == _EMPTY:
                return _EMPTY, (at + 1 if free < 0 else free)
            if loc == _TOMB:
                if free < 0:
                    free = at + 1
            elif words[at] == key:
                return loc, at + 1
            bucket = (bucket + 1) & mask
        raise CorruptSegment("the index has no empty bucket (damaged)")

    @property
    def filled(self) -> int:
        """Buckets holding a key, tombstones included."""
        return int(self.words[L.IX_W_FILLED])

    def full(self) -> bool:
        """Whether one more insert would pass the fill limit: grow first."""
        return (self.filled + 1) * L.IX_FILL_DEN > self.buckets * L.IX_FILL_NUM

    def insert(self, word: int, key: int, loc: int) -> None:
        """Put ``key`` in the empty or removed bucket whose location word ``find`` gave.
        Segment lock held."""
        words = self.words
        if words[word] == _EMPTY:
            words[L.IX_W_FILLED] += 1
        words[word - 1] = key  # the key before the location: see the module docstring
        words[word] = loc

    def live(self) -> Iterator[tuple[int, int, int]]:
        """``(location word, unsigned key, location)`` of every live bucket. Segment lock held."""
        words = self.words
        for bucket in range(self.buckets):
            loc = words[_H + 2 * bucket + 1]
            if loc > _TOMB:
                yield _H + 2 * bucket + 1, words[_H + 2 * bucket], loc

    def live_count(self) -> int:
        """How many buckets hold a live entry. Segment lock held."""
        locs = self.words[_H:].tolist()[1::2]
        return len(locs) - locs.count(_EMPTY) - locs.count(_TOMB)

    def recount(self) -> None:
        """Store how many buckets hold a key (after a recovery). Segment lock held."""
        locs = self.words[_H:].tolist()[1::2]
        self.words[L.IX_W_FILLED] = len(locs) - locs.count(_EMPTY)

    def entries(self) -> Iterator[tuple[int, int]]:
        """``(unsigned key, location)`` of every live bucket (a consistent set with the lock
        held)."""
        flat = self.words[_H:].tolist()
        keys, locs = flat[0::2], flat[1::2]
        return ((key, loc) for key, loc in zip(keys, locs, strict=True) if loc > _TOMB)

    def close(self) -> None:
        """Unmap; harmless while another thread still reads (the GC unmaps it then)."""
        with contextlib.suppress(BufferError, ValueError, AttributeError):
            self.words.release()
            self._mm.close()
