"""An undo journal kept past the end of a PHP-layout segment, so a killed writer is rolled back.

PHP's sysvshm compacts a segment with ``memmove`` on every replace and remove (layout.py), so
a writer killed half way leaves a broken chain: no old value, no new one. PHP has no answer; we
keep one. When shmfs creates a System V segment it asks the kernel for more than the ``size`` the
PHP header declares (``total``), and keeps this journal in the bytes past ``total``, which PHP
never reads or writes::

    J = total rounded up to 8
    J+0   magic      b"SHMFSJNL"
    J+8   state      0 idle, 1 active: a change is in progress and can be undone
    J+16  first      offset of the first saved byte
    J+24  length     number of saved bytes
    J+32  header     the 40-byte PHP header as it was
    J+72  saved      the bytes [first, first + length) as they were

Before a change, the writer saves the header and every byte the change can overwrite below the
current ``end`` (a put of a new index overwrites none; a replace or remove, everything from the
moved chunk to ``end``), then sets ``state`` with one aligned store. It clears ``state`` when
done. The next process to take the lock and find ``state`` set copies the saved bytes back:
the killed writer's change is undone, whatever instant it died at, and undoing twice is harmless.

Segments PHP created have no room past ``total``; changes to them are not journalled.
"""

from __future__ import annotations

from typing import Final

from shmfs.backends.sysv.layout import HEADER_SIZE

__all__ = ["OVERHEAD", "Journal"]

MAGIC: Final = int.from_bytes(b"SHMFSJNL", "little")
_STATE, _FIRST, _LENGTH = 1, 2, 3
_SAVED_HEADER: Final = 32
_SAVED: Final = _SAVED_HEADER + HEADER_SIZE
#: Bytes the journal needs beyond the saved bytes themselves.
OVERHEAD: Final = _SAVED


def _align(offset: int) -> int:
    return (offset + 7) & ~7


class Journal:
    """The journal of one segment mapping (``buf`` is the whole segment)."""

    def __init__(self, buf: memoryview, start: int) -> None:
        self._buf = buf
        self._start = start
        self._words = buf[start : start + _SAVED_HEADER].cast("Q")
        self.capacity = len(buf) - start - _SAVED

    @classmethod
    def find(cls, buf: memoryview, total: int) -> Journal | None:
        """The journal past ``total``, or ``None`` if there is none (a segment PHP created)."""
        start = _align(total)
        if len(buf) - start < _SAVED or buf[start : start + 8].cast("Q")[0] != MAGIC:
            return None
        return cls(buf, start)

    @classmethod
    def format(cls, buf: memoryview, total: int) -> Journal | None:
        """Lay out an idle journal past ``total``, if there is room for one."""
        start = _align(total)
        if len(buf) - start < _SAVED:
            return None
        journal = cls(buf, start)
        journal._words[_STATE] = 0
        journal._words[0] = MAGIC
        return journal

    def begin(self, first: int, end: int) -> None:
        """Save the header and ``[first, end)``, then mark a change in progress.

        A change too big for the journal goes unjournalled (it cannot happen for segments
        shmfs created: their journal holds a whole segment).
        """
        length = max(end - first, 0)
        if length > self.capacity:
            return
        at = self._start + _SAVED
        self._buf[self._start + _SAVED_HEADER : at] = self._buf[:HEADER_SIZE]
        self._buf[at : at + length] = self._buf[first : first + length]
        self._words[_FIRST] = first
        self._words[_LENGTH] = length
        self._words[_STATE] = 1

    def commit(self) -> None:
        """The change is complete: nothing to undo any more."""
        self._words[_STATE] = 0

    def recover(self) -> bool:
        """Undo a change whose writer died; return whether there was one."""
        if not self._words[_STATE]:
            return False
        first, length = self._words[_FIRST], self._words[_LENGTH]
        at = self._start + _SAVED
        if length <= self.capacity and first + length <= self._start:
            self._buf[first : first + length] = self._buf[at : at + length]
            self._buf[:HEADER_SIZE] = self._buf[self._start + _SAVED_HEADER : at]
        self._words[_STATE] = 0
        return True

    def release(self) -> None:
        """Drop the views into the segment (before it is detached)."""
        self._words.release()
