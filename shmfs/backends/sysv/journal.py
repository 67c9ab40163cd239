"""The crash-safe changes of a PHP-layout segment: a small redo journal kept past PHP's area.

PHP's sysvshm compacts a segment with one ``memmove`` on every replace and remove (layout.py), so
a writer killed half way leaves a broken chain: no old value, no new one. When shmfs creates a
System V segment it asks the kernel for :data:`OVERHEAD` (4 KiB) more than the ``size`` the PHP
header declares (``total``), and keeps this journal in those bytes, which PHP never reads or
writes (docs/sysv-and-php.md, "The journal")::

    J = total rounded up to 8
    J+0    magic      b"SHMFSJN2"
    J+8    seed       a random word: the chain index's stamps (chain_index.py)
    J+16   state      IDLE, APPEND (an append in progress), CUT (a compaction in progress)
    J+24   a_end, a_free, a_need   the header's end and free before an append, its chunk size
    J+48   c_pos, c_old            the chunk being cut out and its size
    J+64   c_end, c_free           the header's end and free before the cut
    J+80   done       bytes of the tail already moved down
    J+88   saved      which step's source bytes the buffer holds (-1: none)
    J+128  buffer     CAPACITY bytes: the source bytes of one step of the compaction

**An append** (a new variable, or the first half of a replace) is undone: the chunk goes past
``end``, then ``end`` and ``free`` are stored; a writer killed before it cleared ``state`` is
rolled back to the header it saved, and the bytes it wrote past ``end`` are zeroed.

**A cut** (a remove, or the second half of a replace) is redone: the tail after the chunk moves
down in steps of at most :data:`CAPACITY` bytes. A step's source bytes are copied into the
buffer first and ``saved`` says so; then they are copied to their place and ``done`` moves on.
A writer killed in a step leaves either the source intact (``saved != done``: the step runs again
from the segment) or a buffer that holds it (``saved == done``: it runs again from the buffer),
so the next process to take the lock finishes the cut, whatever instant the writer died at.
A chunk of at least ``_DIRECT`` (128) bytes is cut in steps of its own size, straight from the
segment: a step no longer than the gap never overlaps its own source, so the source stays
intact, and the tail is copied once instead of twice (the buffer untouched, ``saved`` -1).

**A replace** that has room appends the new chunk first and then cuts the old one, so a killed
writer leaves the old value (the append undone) or the new one (the cut finished). A replace
that only fits once the old chunk is gone (PHP's rule, layout.py) must cut first: killed between
the two, it leaves the variable absent (docs/sysv-and-php.md says so).

Once a change returns, nothing of a removed or replaced value is left anywhere: the bytes the
cut vacates and the buffer are zeroed before ``state`` is cleared, and a recovery does the same.

Segments PHP created have no room past ``total``; changes to them go unjournalled, as PHP makes
them (:class:`Unjournalled`).
"""

from __future__ import annotations

import os
import zlib
from typing import Final

from shmfs.backends.sysv import layout

__all__ = ["CAPACITY", "OVERHEAD", "Journal", "Unjournalled", "stamp"]

#: Bytes a segment shmfs creates has beyond its PHP ``size``.
OVERHEAD: Final = 4096
#: The buffer's size: what one step of a compaction copies at most.
CAPACITY: Final = 3840
# Chunks of at least this many bytes are cut in steps of their own size, straight from the
# segment (one pass over the tail); smaller ones through the buffer (two passes and a zeroing,
# but a step per 3840 bytes: a call per 64-byte step costs more than the second pass).
_DIRECT: Final = 128
_MAGIC: Final = int.from_bytes(b"SHMFSJN2", "little", signed=True)
_BUFFER: Final = 128
_NEEDS: Final = _BUFFER + CAPACITY  # at most 7 bytes of alignment + 3968 <= OVERHEAD
_SEED, _STATE, _A_END, _A_FREE, _A_NEED, _C_POS, _C_OLD, _C_END, _C_FREE, _DONE, _SAVED = range(
    1, 12
)
_IDLE, _APPEND, _CUT = 0, 1, 2
_MIN_CHUNK: Final = 32  # layout's smallest chunk
_END, _FREE = 2, 3  # the PHP header's words
_MASK: Final = (1 << 64) - 1
_EDGE: Final = 2048


def stamp(seed: int, index: int, step: int, data: bytes | memoryview) -> int:
    """The word the last padding word of ``index``'s ``step``-byte chunk holding ``data``
    carries (chain_index.py), signed: a hash keyed by ``seed`` of all three, the data's
    checksum covering its first and last 2 KiB."""
    length = len(data)
    check = (
        zlib.crc32(data)
        if length <= 2 * _EDGE
        else zlib.crc32(data[-_EDGE:], zlib.crc32(data[:_EDGE]))
    )
    word = (
        (index ^ seed) * 0x9E3779B97F4A7C15 + (step << 32 | check) * 0x632BE59BD9B4E019 + length
    ) & _MASK
    word ^= word >> 29
    return word - ((word >> 63) << 64)


def _append(
    buf: memoryview, words: memoryview, index: int, data: bytes, *, need: int, seed: int
) -> int:
    """Write ``index``'s chunk at ``end`` (pad zeroed, stamp last) and publish it."""
    at = words[_END]
    word = at >> 3
    length = len(data)
    words[word] = index
    words[word + 1] = length
    words[word + 2] = need
    start = at + layout.CHUNK_HEADER_SIZE
    buf[start : start + length] = data
    buf[start + length : at + need - 8] = bytes(at + need - 8 - start - length)
    words[(at + need - 8) >> 3] = stamp(seed, index, need, data)
    words[_END] = at + need
    words[_FREE] -= need
    return at


class Unjournalled:
    """Changes as PHP makes them, for a segment without a journal (one PHP created): a writer
    killed during a compaction leaves the chain broken, as a killed PHP writer would."""

    #: The journal's first byte in the segment; -1: none.
    offset = -1

    def __init__(self, buf: memoryview, words: memoryview, seed: int) -> None:
        self._buf = buf
        self._words = words
        self.seed = seed

    def append(self, index: int, data: bytes, need: int) -> int:
        """Add a chunk for ``index`` at ``end`` (room checked by the caller); return its offset."""
        return _append(self._buf, self._words, index, data, need=need, seed=self.seed)

    def cut(self, pos: int, old: int) -> None:
        """Cut the ``old``-byte chunk at ``pos`` out, zeroing the bytes it vacates."""
        layout.cut(self._buf, self._words, pos, old, scrub=True)

    def replace(self, index: int, data: bytes, *, pos: int, old: int) -> int:
        """Replace the chunk at ``pos`` with a new one at the end; return its final offset."""
        need = layout.chunk_size(len(data))
        self.cut(pos, old)
        return self.append(index, data, need)

    def recover(self) -> bool:
        """Nothing to finish: there is no journal."""
        return False

    def wipe(self) -> None:
        """Nothing to wipe."""

    def release(self) -> None:
        """Forget the views into the segment (the backend owns and releases them)."""
        del self._buf, self._words


class Journal(Unjournalled):
    """The journal of one segment mapping (``buf`` is the whole segment, ``words`` its
    layout.word_view)."""

    def __init__(self, buf: memoryview, words: memoryview, start: int) -> None:
        self._base = start >> 3  # the journal's first word in ``words``
        self._buffer = start + _BUFFER
        self.offset = start
        super().__init__(buf, words, int(words[self._base + _SEED]))

    @classmethod
    def find(cls, buf: memoryview, words: memoryview, total: int) -> Journal | None:
        """The journal past ``total``, or ``None`` if there is none (a segment PHP created)."""
        start = (total + 7) & ~7
        if len(buf) - start < _NEEDS or words[start >> 3] != _MAGIC:
            return None
        return cls(buf, words, start)

    @classmethod
    def format(cls, buf: memoryview, words: memoryview, total: int) -> Journal | None:
        """Lay out an idle journal past ``total``, if there is room for one."""
        start = (total + 7) & ~7
        if len(buf) - start < _NEEDS:
            return None
        base = start >> 3
        words[base + _STATE] = _IDLE
        words[base + _SEED] = int.from_bytes(os.urandom(8), "little", signed=True)
        words[base] = _MAGIC
        return cls(buf, words, start)

    def _set(self, field: int, value: int) -> None:
        self._words[self._base + field] = value

    def _get(self, field: int) -> int:
        return int(self._words[self._base + field])

    # ------------------------------------------------------------------ changes

    def append(self, index: int, data: bytes, need: int) -> int:
        """Add a chunk for ``index`` at ``end``, undone if the writer dies before it is done."""
        at = self._begin_append(index, data, need)
        self._set(_STATE, _IDLE)
        return at

    def _begin_append(self, index: int, data: bytes, need: int) -> int:
        """Record an append, set ``state`` to it and append; return the chunk's offset (the
        caller then ends the state: idle, or the cut of a replace)."""
        words = self._words
        self._set(_A_END, words[_END])
        self._set(_A_FREE, words[_FREE])
        self._set(_A_NEED, need)
        self._set(_STATE, _APPEND)
        return _append(self._buf, words, index, data, need=need, seed=self.seed)

    def cut(self, pos: int, old: int) -> None:
        """Cut the ``old``-byte chunk at ``pos`` out, finished by the next locker if the writer
        dies; the vacated bytes and the buffer are zeroed."""
        self._begin_cut(pos, old)
        self._finish_cut()

    def _begin_cut(self, pos: int, old: int) -> None:
        """Record a cut and set ``state`` to it (from idle, or from an append's state: one store
        turns an append that is done into a cut that is begun)."""
        words = self._words
        self._set(_C_POS, pos)
        self._set(_C_OLD, old)
        self._set(_C_END, words[_END])
        self._set(_C_FREE, words[_FREE])
        self._set(_DONE, 0)
        self._set(_SAVED, -1)
        self._set(_STATE, _CUT)

    def replace(self, index: int, data: bytes, *, pos: int, old: int) -> int:
        """Replace the chunk at ``pos``: append the new one, then cut the old one (old or new
        after a kill), or the other way round when only that fits; return its final offset."""
        need = layout.chunk_size(len(data))
        if self._words[_FREE] < need:  # fits only without the old chunk: see the docstring
            self.cut(pos, old)
            return self.append(index, data, need)
        at = self._begin_append(index, data, need)
        # No idle state in between: killed here, the append is undone, never left beside the
        # old chunk (two chunks of one index).
        self._begin_cut(pos, old)
        self._finish_cut()
        return at - old

    # ----------------------------------------------------------------- recovery

    def recover(self) -> bool:
        """Finish a cut or undo an append whose writer died; return whether there was one."""
        state = self._get(_STATE)
        if state == _IDLE:
            return False
        if state == _CUT and self._cut_is_sane():
            self._finish_cut()
        elif state == _APPEND and self._append_is_sane():
            end, need = self._get(_A_END), self._get(_A_NEED)
            words = self._words
            words[_END] = end
            words[_FREE] = self._get(_A_FREE)
            self._buf[end : end + need] = bytes(need)
        self.wipe()
        return True

    def _total(self) -> int:
        return int(self._words[4])

    def _append_is_sane(self) -> bool:
        """Whether the saved append fits the segment (words from shared memory: checked)."""
        end, free, need = self._get(_A_END), self._get(_A_FREE), self._get(_A_NEED)
        total = self._total()
        return (
            layout.HEADER_SIZE <= end <= total
            and 0 <= free <= total - end
            and _MIN_CHUNK <= need <= total - end
            and not end & 7
        )

    def _cut_is_sane(self) -> bool:
        """Whether the saved cut lies within the segment (checked before any copy)."""
        pos, old, end = self._get(_C_POS), self._get(_C_OLD), self._get(_C_END)
        free, done, saved = self._get(_C_FREE), self._get(_DONE), self._get(_SAVED)
        total = self._total()
        return (
            pos >= layout.HEADER_SIZE
            and old >= _MIN_CHUNK
            and pos + old <= end <= total
            and 0 <= free <= total - end
            and 0 <= done <= end - pos - old
            and -1 <= saved <= done
            and not (pos | old | end) & 7
        )

    def _finish_cut(self) -> None:
        """Move the rest of the tail down step by step, then publish the header and zero the
        vacated bytes and the buffer; ``state`` cleared last. Runs again safely after a kill."""
        buf, words, base = self._buf, self._words, self._base
        pos, old = words[base + _C_POS], words[base + _C_OLD]
        end = words[base + _C_END]
        tail = end - pos - old
        done = words[base + _DONE]
        buffer = self._buffer
        # Killed copying from the buffer (whichever way it cut: a writer with another _DIRECT
        # may have buffered this chunk): that step runs again from the buffer, then the rest.
        if words[base + _SAVED] == done and done < tail:
            step = min(CAPACITY, tail - done)
            buf[pos + done : pos + done + step] = buf[buffer : buffer + step]
            done += step
            words[base + _DONE] = done
        if old >= _DIRECT:  # source and destination of a step of ``old`` bytes never overlap
            while done < tail:
                step = min(old, tail - done)
                buf[pos + done : pos + done + step] = buf[
                    pos + old + done : pos + old + done + step
                ]
                done += step
                words[base + _DONE] = done
        else:
            while done < tail:
                step = min(CAPACITY, tail - done)
                words[base + _SAVED] = -1
                source = pos + old + done
                buf[buffer : buffer + step] = buf[source : source + step]
                words[base + _SAVED] = done
                buf[pos + done : pos + done + step] = buf[buffer : buffer + step]
                done += step
                words[base + _DONE] = done
        words[_END] = end - old
        words[_FREE] = words[base + _C_FREE] + old
        buf[end - old : end] = bytes(old)
        if tail and old < _DIRECT:
            used = min(CAPACITY, tail)
            buf[buffer : buffer + used] = bytes(used)
        words[base + _SAVED] = -1
        words[base + _STATE] = _IDLE

    def wipe(self) -> None:
        """Zero the buffer and mark the journal idle (after a recovery, whatever it found)."""
        self._buf[self._buffer : self._buffer + CAPACITY] = bytes(CAPACITY)
        self._set(_SAVED, -1)
        self._set(_STATE, _IDLE)
