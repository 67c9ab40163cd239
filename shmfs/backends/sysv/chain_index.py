"""Where each variable's chunk is in a PHP-layout segment, remembered between operations.

A lookup in PHP's layout walks the chunk chain from ``start`` (layout.py): a few Python operations
per chunk, 1.5 ms among 10,000 variables. This index remembers the offset of every variable's
chunk, and trusts it only as far as it can prove it, in time that does not grow with the chain.

**Stamps: why a remembered offset is proved right in O(1).** PHP processes change the segment
between our operations (a ``shm_put_var`` of an existing key moves its chunk to the end with a
``memmove``, leaving the header's words as they were when the sizes match), and a stored value
may hold bytes that look like a chunk header with any key, so a header alone proves nothing. The
last 8 bytes of every chunk are padding that PHP never writes (``next`` leaves 8 to 15 bytes
after the data, layout.py) and that a ``memmove`` carries along with its chunk. Our writes put a
*stamp* there (journal.stamp): a hash, keyed by a random seed kept in the journal, of the index,
the chunk's ``next``, the value's length and a crc32 of the value; a walk stamps every chunk it
proves. An offset is then trusted when the chunk header there names the variable, lies within
``end``, and its last word is the stamp of that header and the value after it. A chunk PHP moved
away leaves another chunk's header (another index) or the inside of one (no stamp: the seed is
unknown to whoever chose the value) at the remembered offset. A chunk PHP wrote anew keeps
whatever its padding held before, which is a stamp only where a stamped chunk ended, and then the
stamp of that chunk's very header and value: a value holding a copy of another variable's
earlier chunk, header and all, placed by PHP's moves exactly where that chunk was, would be
taken for it (the stale value of that variable; never anything the index was not given). The
length and ``next`` are read afresh each time. A mismatch sends the lookup back to a full walk.

**That a variable is absent** cannot be proved by one place: PHP may have added it anywhere. The
index keeps a copy of the bytes ``[0, end)`` as of its last walk (kept up to date through our
own writes) and trusts its own "absent" only while the whole ``[0, end)`` is unchanged: one
``memcmp`` (about 20 GB/s), then a full walk if a byte differs. So a new variable's write is
proved by the whole copy too.

**A write to a remembered variable** (a replace, a remove) is proved by that variable's chunk
alone: its stamp, and the copy agreeing with the segment on the header and on that chunk's
bytes. PHP keeps one chunk per index, so the stamped chunk is the one to cut; what PHP changed
elsewhere does not matter to the write. It matters to the copy, which must never come to equal
the segment while the index misses a change: so the copy is not refreshed from the segment but
given the same change (the chunk cut out, the rest moved within the copy, our new chunk and the
header copied in). A difference PHP made elsewhere is then still a difference, shifted as the
segment's bytes were, and the next proof of an absence walks. What such a write trusts is what
a read trusts, the stamp (with the limit above: a value holding a verbatim copy of our chunk,
placed where that chunk was, would be cut instead of it), and that no writer left the index
twice in the chain (no PHP function does; a walk refuses such a chain, below).

**Our own writes** move chunks too: a replaced or removed chunk shifts every later one down by its
size. Rewriting every later offset would cost what the walk costs, so the shift is logged instead
and applied to an offset when it is next looked up; a log longer than ``_MAX_MOVES`` (which grows
with the chain) is emptied by reading every offset afresh. Chains whose chunks average more than
``_MAX_AVERAGE_CHUNK`` bytes keep no copy (comparing it would cost more than a walk).

**When there is no index**: chains that hold an index twice (only a foreign writer makes those;
which chunk a lookup finds then changes with our own writes in ways the log does not follow).
Every lookup walks then; a chain found unfit is walked plainly for ``_RETRY`` lookups before the
index is tried again.

Everything here runs under the segment lock; the caller checks index types and ranges.
"""

from __future__ import annotations

from typing import Final

from shmfs.backends.sysv import layout
from shmfs.backends.sysv.journal import stamp
from shmfs.errors import CorruptSegment

__all__ = ["ChainIndex"]

_CHUNK_HEADER: Final = layout.CHUNK_HEADER_SIZE
_MIN_CHUNK: Final = 32  # layout's smallest chunk
_END_WORD: Final = 2  # the header's ``end``, in word_view's words
_MAX_AVERAGE_CHUNK: Final = 2048
_MOVES_BASE, _MOVES_PER, _MOVES_CAP = 16, 16, 64  # _max_moves
_RETRY: Final = 64


class ChainIndex:
    """The offsets of one segment's chunks, proved by their stamps before use.

    ``buf`` is the whole segment (format ``"B"``), ``words`` its layout.word_view, and ``seed``
    the key of the stamps (shared by every process that writes the segment, for their stamps to
    agree).
    """

    __slots__ = ("_buf", "_copy", "_moves", "_seed", "_unfit", "_where", "_words", "indexed")

    def __init__(self, buf: memoryview, words: memoryview, seed: int) -> None:
        self._buf = buf
        self._words = words
        self._seed = seed
        # Whether _where holds every chunk as of the last walk (and our writes since).
        self.indexed = False
        # The bytes [0, end) as of the last walk and our writes since; empty: not kept. This
        # bytearray, dict and list are never replaced (emptied instead): the C fast path holds
        # them (hot_state).
        self._copy = bytearray()
        # index -> (offset, len(self._moves) when the offset was right).
        self._where: dict[int, tuple[int, int]] = {}
        # (offset, size) of every chunk our writes removed since the walk, in order.
        self._moves: list[tuple[int, int]] = []
        self._unfit = 0

    @property
    def words(self) -> memoryview:
        """The segment as native signed 64-bit words (layout's ``word_view``)."""
        return self._words

    def find(self, index: int, *, exact: bool = False) -> tuple[int, int, int] | None:
        """(offset, length, next) of the first chunk holding ``index``, or ``None``.

        ``exact``: for a write, which then updates the index and patches the copy as it
        changes the segment. A new variable's absence is proved by the whole copy; a
        remembered one's chunk by its stamp and by the copy agreeing with the segment there
        (:meth:`_agrees`), not by the whole copy: the write cuts that chunk out of both alike,
        so a difference elsewhere stays a difference and the next proof of an absence walks.

        Raises:
            CorruptSegment: As layout's walk: the header, or a chunk before the match,
                fails its checks.
        """
        if exact and (not self.indexed or not self._copy):
            return self._walk(index)
        if self.indexed:
            entry = self._where.get(index)
            if entry is None:
                copy = self._copy
                if copy and copy.startswith(self._buf[: len(copy)]):  # its header: end too
                    return None
            else:
                pos, seen = entry
                if seen != len(self._moves):
                    pos = self._catch_up(index, entry)
                found = self._proved(index, pos)
                if found is not None and (not exact or self._agrees(pos, found[2])):
                    return found
        return self._walk(index)

    def _agrees(self, pos: int, step: int) -> bool:
        """Whether the copy is the segment's length and holds its header and the ``step``
        bytes at ``pos``."""
        copy, buf = self._copy, self._buf
        return (
            len(copy) == self._words[_END_WORD]
            and copy[: layout.HEADER_SIZE] == buf[: layout.HEADER_SIZE]
            and copy[pos : pos + step] == buf[pos : pos + step]
        )

    def _proved(self, index: int, pos: int) -> tuple[int, int, int] | None:
        """(pos, length, next) if the chunk at ``pos`` is ``index``'s, by its stamp."""
        words, buf = self._words, self._buf
        end = layout.read_header(buf).end  # checked: a damaged header is reported, not used
        word = pos >> 3
        if pos + _MIN_CHUNK > end or words[word] != index:
            return None
        length, step = words[word + 1], words[word + 2]
        if (
            step < _MIN_CHUNK
            or step & 7
            or step > end - pos
            or not 0 <= length <= step - _MIN_CHUNK
        ):
            return None
        data = pos + _CHUNK_HEADER
        if words[word + (step >> 3) - 1] != stamp(
            self._seed, index, step, buf[data : data + length]
        ):
            return None
        return pos, int(length), int(step)

    def _catch_up(self, index: int, entry: tuple[int, int]) -> int:
        """Apply the moves logged since ``entry`` was right to its offset."""
        pos, seen = entry
        moves = self._moves
        for removed_at, removed in moves[seen:]:
            if pos > removed_at:
                pos -= removed
        self._where[index] = (pos, len(moves))
        return pos

    def _walk(self, index: int) -> tuple[int, int, int] | None:
        """Walk the whole chain, stamp and remember it if it is fit, and answer for ``index``."""
        self.forget()
        buf, words = self._buf, self._words
        header = layout.read_header(buf)
        if self._unfit:
            self._unfit -= 1
            return _plain_find(words, header, index)
        where: dict[int, tuple[int, int]] = {}
        found_at: tuple[int, int, int] | None = None
        pos, end = header.start, header.end
        try:
            while pos < end:
                # chunk_at()'s checks, inline: this loop is most of a walk's cost.
                word = pos >> 3
                key, length, step = words[word], words[word + 1], words[word + 2]
                if step < _MIN_CHUNK or step & 7 or step > end - pos or length < 0:
                    layout.chunk_at(words, header, pos)  # raises, saying what is wrong
                if length > step - _MIN_CHUNK:
                    layout.chunk_at(words, header, pos)
                if key in where:
                    self._unfit = _RETRY  # a foreign writer's duplicate: no index
                    return found_at if found_at is not None else _plain_find(words, header, index)
                where[key] = (pos, 0)
                if key == index:
                    found_at = (pos, int(length), int(step))
                pos += step
        except CorruptSegment:
            # A lookup stops at the first match, so a match before the damage still stands.
            self._unfit = _RETRY
            if found_at is None:
                raise
            return found_at
        seed = self._seed
        for key, (at, _) in where.items():
            word = at >> 3
            length, step = words[word + 1], words[word + 2]
            last = word + (step >> 3) - 1
            mark = stamp(seed, key, step, buf[at + _CHUNK_HEADER : at + _CHUNK_HEADER + length])
            if words[last] != mark:
                words[last] = mark  # padding PHP never reads: the chunk proved by this walk
        self._where.update(where)
        self.indexed = True
        if end - header.start <= _MAX_AVERAGE_CHUNK * len(where):
            self._copy[:] = buf[:end]
        return found_at

    def stored(self, index: int, pos: int, old: int, at: int) -> None:
        """Our write moved ``index`` from ``pos`` (a chunk of ``old`` bytes; -1 and 0: it was
        new) to a stamped chunk at ``at``, the end of the chain."""
        if not self.indexed:
            return
        moves, where = self._moves, self._where
        if pos >= 0:
            moves.append((pos, old))
        where[index] = (at, len(moves))
        self._patch(pos, old if pos >= 0 else 0, at)
        if len(moves) > _max_moves(len(where)):
            self._renumber()

    def removed(self, index: int, *, pos: int, step: int) -> None:
        """Our write removed ``index``'s ``step``-byte chunk at ``pos``."""
        if not self.indexed:
            return
        self._moves.append((pos, step))
        self._where.pop(index, None)
        self._patch(pos, step, -1)
        if len(self._moves) > _max_moves(len(self._where)):
            self._renumber()

    def _renumber(self) -> None:
        """Read every chunk's offset afresh and empty the move log. Called after our own write,
        which proved the chunk it changed: offsets only are read (no stamps checked), and an
        entry the chain no longer holds keeps its old offset, which its stamp then refuses
        (a foreign writer's change since the copy: the copy differs, and an absence walks)."""
        words, where = self._words, self._where
        pos, end = words[1], words[_END_WORD]
        self._moves.clear()
        try:
            while pos < end:
                word = pos >> 3
                step = words[word + 2]
                if step < _MIN_CHUNK or step & 7:
                    raise CorruptSegment(f"chunk at {pos} has next={step}")
                where[words[word]] = (pos, 0)
                pos += step
            if pos != end:
                raise CorruptSegment(f"the chain ends at {pos}, not at end={end}")
        except CorruptSegment:
            self.forget()  # a foreign writer's doing: the next lookup walks and says what

    def _patch(self, pos: int, old: int, at: int) -> None:
        """Give the copy the change our write gave the segment: the ``old`` bytes at ``pos``
        cut out (``pos`` -1: none), the chunk at ``at`` (-1: none) and the header copied. The
        rest is moved within the copy, never read from the segment, so that the copy stays
        the bytes our writes and the last walk vouch for, and any other change stays a
        difference. Dropped when it was not the length the write found."""
        copy = self._copy
        if not copy:
            return
        buf = self._buf
        end = self._words[_END_WORD]
        if end > _MAX_AVERAGE_CHUNK * len(self._where) + layout.HEADER_SIZE or len(copy) - old != (
            at if at >= 0 else end
        ):
            del copy[:]  # big values now (copying them costs more than walking), or unproved
            return
        # Interrupted part way, the copy is not the segment's length: it proves nothing then.
        if pos >= 0:
            del copy[pos : pos + old]
        copy[: layout.HEADER_SIZE] = buf[: layout.HEADER_SIZE]
        if at >= 0:
            copy[at:] = buf[at:end]

    def forget(self) -> None:
        """Drop the index (the segment was wiped, or the caller cannot say what changed)."""
        self.indexed = False
        del self._copy[:]
        self._where.clear()
        self._moves.clear()

    def release(self) -> None:
        """Drop every reference into the segment (before it is detached)."""
        self.forget()

    def hot_state(self) -> tuple[dict[int, tuple[int, int]], list[tuple[int, int]], bytearray]:
        """What the C fast path reads and proves as this class does (shmfs/_hot_c/sysv.c):
        index -> (offset, moves seen), the moves, and the copy (empty: none). The same three
        objects for this index's whole life; the C code updates the index through
        :meth:`stored` only."""
        return self._where, self._moves, self._copy


def _max_moves(chunks: int) -> int:
    # Catching an offset up costs a few ns per logged move in C (60 ns in Python), renumbering
    # ~200 ns per chunk: a log growing with the chain keeps both small per operation, and the cap
    # keeps a get's catch-up short among many variables.
    return min(_MOVES_CAP, _MOVES_BASE + chunks // _MOVES_PER)


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
