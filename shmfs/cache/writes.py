"""How every write of a :class:`~shmfs.cache.Cache` reaches its segment.

A write is a rewrite of one entry under the segment lock (``entry.rewrite``), or for ``set`` an
overwrite that skips reading the old entry where it can (``entry.overwrite``) and, before that,
one lock-free call over the key's own entry (``Segment.put_if_head``; with the C module, the
handle's ``set`` makes that call and all around it in C first, ``hotpath.cache_sets``, and
hands anything else to this module). When the result does not fit, a cache with the ``"lru"``
policy evicts (``lru.Evictor``) and writes again, holding the lock from the first eviction to
the write. Each stored entry counts as a use for the LRU.
"""

from __future__ import annotations

from typing import Any

from shmfs import pickling
from shmfs.cache import entry as cache_entry
from shmfs.cache.entry import Change, Entry, overwrite, rewrite
from shmfs.cache.keys import FIRST_ENTRY
from shmfs.cache.lru import Evictor, Recency
from shmfs.errors import SegmentFull
from shmfs.segment import Segment

__all__ = ["Writes"]


class Writes:
    """The writes of one cache handle: its segment, its LRU notes and its eviction."""

    __slots__ = ("_evict", "_evictor", "_heads", "_recency", "_remember", "_segment")

    def __init__(
        self, segment: Segment, recency: Recency, evictor: Evictor, *, evict: bool, remember: int
    ) -> None:
        self._segment = segment
        self._recency = recency
        self._evictor = evictor
        self._evict = evict  # policy "lru": make room; "error": raise SegmentFull
        self._heads: dict[str, bytes] = {}  # canonical key -> pickling.tuple_head of it
        self._remember = remember  # how many heads, at most

    def used(self, index: int, now: float) -> None:
        """Note a use of ``index`` for the LRU; share the notes now and then."""
        recency = self._recency
        recency.pending[index & recency.mask] = now
        if now > recency.due:
            recency.flush(now)

    def write(self, index: int, text: str, change: Change, value: Any = None) -> Any:
        """Apply ``change`` to ``text``'s live entry at ``index`` (``cache_entry.rewrite``),
        evicting to make room if the result (holding ``value``) does not fit; return what
        ``change`` answers."""
        segment = self._segment
        try:
            answer, stored, now = rewrite(segment, index, text, change)
        except SegmentFull as full:
            if not self._evict:
                raise
            answer, stored, now = self._evict_and_write(full, index, text, change, value)
        if stored and index >= FIRST_ENTRY:
            self.used(index, now)  # a write is a use: a new entry is not the oldest
        return answer

    def _evict_and_write(
        self, full: SegmentFull, index: int, text: str, change: Change, value: Any
    ) -> tuple[Any, bool, float]:
        """Evict until the write fits, holding the lock from the first eviction to the write:
        otherwise other writers take the room as it is made, and each retry evicts more."""
        with self._segment.lock():
            attempt = 0
            while True:
                if not self._evictor.make_room(full, attempt, value):
                    raise full
                try:
                    return rewrite(self._segment, index, text, change)
                except SegmentFull as again:
                    full = again
                    attempt += 1

    def set(self, index: int, text: str, value: Any, life: float | None) -> None:
        """Store ``value`` as ``text``'s entry at ``index``, living ``life`` seconds (``None``:
        for ever): ``Cache.set`` once the key is checked."""
        if self._set_in_place(index, text, value, life):
            return

        def store(old: Entry | None, now: float) -> tuple[None, Entry]:
            return None, (text, value, None if life is None else now + life, now)

        try:
            now = overwrite(self._segment, index, text, value, life)
        except SegmentFull as full:
            if not self._evict:
                raise
            now = self._evict_and_write(full, index, text, store, value)[2]
        if now is None:  # the variable is a bucket: the general path
            self.write(index, text, store, value)
        else:
            self.used(index, now)

    def _set_in_place(self, index: int, text: str, value: Any, life: float | None) -> bool:
        """``set``'s fast path: over ``text``'s own entry, in one lock-free call
        (``Segment.put_if_head``) that compares the stored pickle's head with the new one's
        instead of decoding it; ``False`` if it cannot (no fast path, a value that is not
        plain, a bucket of several keys, a lock to wait for): ``overwrite`` then does it. An
        empty variable takes the entry in the same call: ``overwrite`` would store it there too."""
        head = self._heads.get(text)
        if head is None:
            if len(self._heads) >= self._remember:
                self._heads.clear()
            head = self._heads[text] = pickling.tuple_head(text)
        now = cache_entry.clock()
        entry = (text, value, None if life is None else now + life, now)
        if not self._segment.put_if_head(
            index, entry, pickling.TUPLE_HEAD_AT, head, or_absent=True
        ):
            return False
        self.used(index, now)
        return True
