"""Where each variable's chunk is in a PHP-layout segment, remembered between operations.

A lookup in PHP's layout walks the chunk chain from ``start`` (layout.py), a few Python
operations per chunk: 10 us among 100 variables, more than the rest of a get. This index
remembers the offset of every variable's chunk, and trusts it only as far as it can prove it.

**Why a remembered offset is proved right.** PHP processes change the segment between our
operations (a ``shm_put_var`` of an existing key moves its chunk to the end with a ``memmove``,
leaving the header's words as they were when the sizes match), and a stored value may hold bytes
that look like a chunk header with any key. So no word of the segment is evidence on its own.
What is: the walk to a chunk at offset ``pos`` reads only the bytes ``[0, pos + 24)`` (the header,
then every chunk header before ``pos``, then ``pos``'s own) and its result depends on nothing else.
The index keeps a copy of the bytes ``[0, end)`` as of its last walk (kept up to date through our
own writes), and before trusting the offset of a chunk it compares ``[0, pos + 24)`` with that copy:
equal bytes, equal walk, whatever any process did in between. That the index has no entry for a
variable is trusted only when the whole ``[0, end)`` is equal. A comparison is one ``memcmp`` (about
20 GB/s: 0.2 us for 100 chunks of 100-byte values); a different byte anywhere before the chunk sends
the lookup back to a full walk, which makes a new copy.

**Our own writes** move chunks too: a replaced or removed chunk shifts every later one down by its
size. Rewriting every later offset would cost what the walk costs, so the shift is logged instead
and applied to an offset when it is next looked up; a log longer than ``_MAX_MOVES`` (which grows
with the chain) drops the index, and the next lookup walks again. The copy is updated from the
changed offset on (the same bytes the ``memmove`` moved).

**When there is no index**: chains whose chunks average more than ``_MAX_AVERAGE_CHUNK`` bytes
(comparing their bytes costs more than walking them, and each put would copy big values twice),
and chains that hold an index twice (only a foreign writer makes those; which chunk a lookup finds
then changes with our own writes in ways the log does not follow). Every lookup walks then, as
before; a chain found unfit is walked plainly for ``_RETRY`` lookups before the index is tried
again.

Everything here runs under the segment lock; the caller checks index types and ranges.
"""

from __future__ import annotations

from typing import Final

from shmfs.backends.sysv import layout
from shmfs.errors import CorruptSegment

__all__ = ["ChainIndex"]

_CHUNK_HEADER: Final = layout.CHUNK_HEADER_SIZE
_MIN_CHUNK: Final = 32  # layout's smallest chunk
_END_WORD: Final = 2  # the header's ``end``, in word_view's words
_MAX_AVERAGE_CHUNK: Final = 2048
_RETRY: Final = 64


class ChainIndex:
    """The offsets of one segment's chunks, proved against a copy of its bytes before use.

    ``buf`` is the whole segment (format ``"B"``), as layout's functions take it.
    """

    __slots__ = ("_buf", "_copy", "_moves", "_unfit", "_where", "_words")

    def __init__(self, buf: memoryview) -> None:
        self._buf = buf
        self._words: memoryview | None = layout.word_view(buf)
        # The bytes [0, end) as of the last walk and our writes since; None: no index.
        self._copy: bytearray | None = None
        # index -> (offset, length, next, len(self._moves) when the offset was right).
        self._where: dict[int, tuple[int, int, int, int]] = {}
        # (offset, size) of every chunk our writes removed since the walk, in order.
        self._moves: list[tuple[int, int]] = []
        self._unfit = 0

    @property
    def words(self) -> memoryview:
        """The segment as native signed 64-bit words (layout's ``word_view``)."""
        if self._words is None:
            raise ValueError("the chain index was released")
        return self._words

    def find(self, index: int) -> tuple[int, int, int] | None:
        """(offset, length, next) of the first chunk holding ``index``, or ``None``.

        Raises:
            CorruptSegment: As layout's walk: the header, or a chunk before the match,
                fails its checks.
        """
        copy = self._copy
        if copy is not None:
            entry = self._where.get(index)
            if entry is None:
                if copy.startswith(self._buf[: len(copy)]):
                    return None
            else:
                pos, length, step, seen = entry
                if seen != len(self._moves):
                    pos = self._catch_up(index, entry)
                if copy.startswith(self._buf[: pos + _CHUNK_HEADER]):
                    return pos, length, step
        return self._walk(index)

    def _catch_up(self, index: int, entry: tuple[int, int, int, int]) -> int:
        """Apply the moves logged since ``entry`` was right to its offset."""
        pos, length, step, seen = entry
        moves = self._moves
        for removed_at, removed in moves[seen:]:
            if pos > removed_at:
                pos -= removed
        self._where[index] = (pos, length, step, len(moves))
        return pos

    def _walk(self, index: int) -> tuple[int, int, int] | None:
        """Walk the whole chain, remember it if it is fit, and answer for ``index``."""
        self._copy = None
        buf, words = self._buf, self.words
        header = layout.read_header(buf)
        if self._unfit:
            self._unfit -= 1
            return _plain_find(words, header, index)
        where: dict[int, tuple[int, int, int, int]] = {}
        twice = False
        pos, end = header.start, header.end
        try:
            while pos < end:
                # chunk_at()'s checks, inline: this loop is most of a walk's cost.
                word = pos >> 3
                found, length, step = words[word], words[word + 1], words[word + 2]
                if step < _MIN_CHUNK or step & 7 or step > end - pos or length < 0:
                    layout.chunk_at(words, header, pos)  # raises, saying what is wrong
                if length > step - _MIN_CHUNK:
                    layout.chunk_at(words, header, pos)
                if found in where:
                    twice = True
                else:
                    where[found] = (pos, length, step, 0)
                pos += step
        except CorruptSegment:
            # A lookup stops at the first match, so a match before the damage still stands.
            self._unfit = _RETRY
            entry = where.get(index)
            if entry is None:
                raise
            return entry[:3]
        entry = where.get(index)
        if twice or end - header.start > _MAX_AVERAGE_CHUNK * len(where):
            self._unfit = _RETRY
        else:
            self._where = where
            self._moves = []
            self._copy = bytearray(buf[:end])
        return None if entry is None else entry[:3]

    def stored(self, index: int, *, pos: int, old: int, at: int, length: int, step: int) -> None:
        """Our write moved ``index`` from ``pos`` (a chunk of ``old`` bytes; -1 and 0: it was
        new) to a ``step``-byte chunk holding ``length`` bytes at ``at``, the end of the chain."""
        copy, self._copy = self._copy, None  # interrupted half way, the index is just dropped
        if copy is None:
            return
        moves, where = self._moves, self._where
        if pos >= 0:
            moves.append((pos, old))
        where[index] = (at, length, step, len(moves))
        if len(moves) > _max_moves(len(where)):
            return
        if at + step > _MAX_AVERAGE_CHUNK * len(where) + layout.HEADER_SIZE:
            return  # big values now: copying them costs more than walking past them
        self._refresh(copy, pos if pos >= 0 else at, at + step)

    def removed(self, index: int, *, pos: int, step: int) -> None:
        """Our write removed ``index``'s ``step``-byte chunk at ``pos``."""
        copy, self._copy = self._copy, None
        if copy is None:
            return
        self._moves.append((pos, step))
        del self._where[index]
        if len(self._moves) > _max_moves(len(self._where)):
            return
        self._refresh(copy, pos, self.words[_END_WORD])

    def _refresh(self, copy: bytearray, first: int, end: int) -> None:
        """Copy the header and the bytes ``[first, end)`` our write changed; the index is valid."""
        buf = self._buf
        copy[first:] = buf[first:end]
        copy[: layout.HEADER_SIZE] = buf[: layout.HEADER_SIZE]
        self._copy = copy

    def forget(self) -> None:
        """Drop the index (the segment was wiped, or the caller cannot say what changed)."""
        self._copy = None
        self._where = {}
        self._moves = []

    def release(self) -> None:
        """Drop every view into the segment (before it is detached)."""
        self.forget()
        if self._words is not None:
            self._words.release()
            self._words = None


def _max_moves(chunks: int) -> int:
    # Catching an offset up costs ~60 ns per logged move, walking again ~150 ns per chunk: a log
    # growing with the chain keeps both small per operation.
    return 16 + chunks // 16


def _plain_find(
    words: memoryview, header: layout.Header, index: int
) -> tuple[int, int, int] | None:
    """layout's walk, stopping at the first match."""
    pos = header.start
    while pos < header.end:
        found, length, step = layout.chunk_at(words, header, pos)
        if found == index:
            return pos, length, step
        pos += step
    return None
