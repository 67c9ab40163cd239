"""The cache's shared bookkeeping: access stamps for LRU eviction, and the stats counters.

Rewriting an entry to record each hit would make every read a write of the whole value, so
access times live apart from the entries, in one small variable (index :data:`STAMPS`): an array
of float64 holding three counters (hits, misses, evictions) and then one wall-clock stamp per
*slot*. An entry's slot is its index modulo the number of slots (a power of two from 64 to
16384, about one per 256 bytes of the segment's size: 3% of a tiny cache, 0.2% of 64 MiB), and
a slot's stamp is the latest use of any entry in it. So an entry never looks older than it is,
but a cold entry sharing a hot one's slot looks hot: with eviction by sampling (below), the LRU
is approximate, as Redis's is.

A hit costs a dict store in the handle (``pending[slot] = now``). A handle merges its pending
stamps and counts into the shared array with its first operation :data:`FLUSH_EVERY` seconds or
more after the last merge, before it evicts, in ``stats()`` and on ``close()``: one
read-modify-write of 0.5 to 128 KiB under the lock, instead of a write per hit. Stamps are only
ever raised (``max``), so merges in any order agree. A merge of thousands of slots takes
milliseconds (a handle reading keys at random touches a new slot with nearly every hit), so the
wait before the next one grows to :data:`FLUSH_SHARE` times the last merge's duration, up to
:data:`FLUSH_AT_MOST` seconds: merging never takes more than about 2% of a handle's time, and
other processes see its stamps and counts at most a second late.

Eviction (:class:`Evictor`) happens when a write raises ``SegmentFull``.

The array is stored as ``bytes``, or as base64 text with the json and php codecs, which cannot
hold bytes. Its length is fixed by the segment's size, so rewriting it never needs more room.
"""

from __future__ import annotations

import base64
import contextlib
import random
import threading
import time
from array import array
from typing import Any, Final

from shmfs import codecs, frame
from shmfs.cache import entry as cache_entry
from shmfs.cache.entry import entries, live
from shmfs.cache.keys import FIRST_ENTRY
from shmfs.errors import (
    CorruptSegment,
    LockTimeout,
    SegmentFull,
    SerializationError,
    ShmfsError,
    UnsafeSegment,
)
from shmfs.forking import fork_epoch
from shmfs.segment import Segment

__all__ = [
    "COUNTERS",
    "FLUSH_AT_MOST",
    "FLUSH_EVERY",
    "FLUSH_SHARE",
    "STAMPS",
    "Evictor",
    "Recency",
]

STAMPS: Final = 1  # the variable holding the counters and the stamps
COUNTERS: Final = 3  # hits, misses, evictions come first in the array
FLUSH_EVERY: Final = 0.05  # seconds a handle keeps its stamps and counts before sharing them
FLUSH_SHARE: Final = 50  # ... or this many times as long as its last merge took
FLUSH_AT_MOST: Final = 1.0  # ... but never longer than this
_MIN_SLOTS: Final = 64
_MAX_SLOTS: Final = 16384
_BYTES_PER_SLOT: Final = 256
_RELIST_EVERY: Final = 1.0  # seconds an evicting handle reuses its list of the entries
_UNREADABLE: Final[Any] = object()


def slots_for(size: int) -> int:
    """The number of stamp slots for a segment of ``size`` bytes: a power of two."""
    wanted = max(size // _BYTES_PER_SLOT, _MIN_SLOTS)
    return min(1 << (wanted.bit_length() - 1), _MAX_SLOTS)


class Recency:
    """One handle's unshared stamps and counts, and the shared array they are merged into.

    Args:
        segment: The cache's segment.
        binary: Whether the segment's codec can store bytes (else base64 text is stored).
    """

    def __init__(self, segment: Segment, binary: bool) -> None:
        self.segment = segment
        self.binary = binary
        self.slots = slots_for(segment.size)
        self.mask = self.slots - 1
        #: slot -> latest use seen by this handle and not yet shared
        self.pending: dict[int, float] = {}
        #: hits, misses, evictions counted by this handle and not yet shared
        self.counts = [0, 0, 0]
        #: when the next merge is due, on ``cache_entry.clock()``'s scale (0: at the first use)
        self.due = 0.0
        self._epoch = fork_epoch()
        # Two threads flushing the same counts would share them twice.
        self._flushing = threading.Lock()

    def _blank(self) -> array[float]:
        return array("d", bytes(8 * (COUNTERS + self.slots)))

    def _pack(self, stamps: array[float]) -> bytes | str:
        data = stamps.tobytes()
        return data if self.binary else base64.b64encode(data).decode("ascii")

    def _unpack(self, stored: Any) -> array[float]:
        """The array in ``stored``; a blank one if it is missing or not ours (wrong length)."""
        stamps = array("d")
        try:
            data = base64.b64decode(stored) if isinstance(stored, str) else bytes(stored)
        except (TypeError, ValueError):
            return self._blank()
        if len(data) != 8 * (COUNTERS + self.slots):
            return self._blank()
        stamps.frombytes(data)
        return stamps

    def install(self) -> None:
        """Create the shared array if the segment has none, so its room is taken up front.

        Raises:
            SegmentFull: the segment is too small even for the array.
        """
        self.segment.add(STAMPS, self._pack(self._blank()))

    def flush(self, now: float, wait: bool = False) -> None:
        """Merge this handle's pending stamps and counts into the shared array.

        Best effort: if the lock times out or there is no room, they stay pending for the next
        flush (stamps only guide eviction; counts are kept, not lost). If another thread of
        this process is flushing the same handle, return at once, unless ``wait``.
        """
        self.due = now + FLUSH_EVERY
        if self._epoch != fork_epoch():
            # A forked child inherited its parent's unshared counts: they are the parent's to
            # share, not ours, or both processes would count them. And a lock another thread
            # held at the fork would never be released here.
            self._epoch = fork_epoch()
            self._flushing = threading.Lock()
            self.pending.clear()
            self.counts[:] = [0, 0, 0]
            return
        if not self._flushing.acquire(blocking=wait):
            return
        started = time.perf_counter()
        try:
            self._flush()
        finally:
            self._flushing.release()
            spent = time.perf_counter() - started
            self.due = now + min(max(FLUSH_EVERY, FLUSH_SHARE * spent), FLUSH_AT_MOST)

    def _flush(self) -> None:
        counts = list(self.counts)
        if not self.pending and not any(counts):
            return
        # In place: the cache binds these two objects for its hot path.
        stamps = dict(self.pending)
        self.pending.clear()

        def merge(stored: Any) -> bytes | str:
            shared = self._unpack(stored)
            for number in range(COUNTERS):
                shared[number] += counts[number]
            for slot, stamp in stamps.items():
                if stamp > shared[COUNTERS + slot]:  # noqa: PLR1730  # max() costs a call per slot
                    shared[COUNTERS + slot] = stamp
            return self._pack(shared)

        try:
            try:
                self.segment.update(STAMPS, merge, default=None)
            except (CorruptSegment, SerializationError, UnsafeSegment):
                # Damaged, or planted by an untrusted user: start the array afresh, with the
                # other handles' counts lost, rather than fail every flush (and every get).
                self.segment.put(STAMPS, merge(None))
        except (SegmentFull, LockTimeout):
            for slot, stamp in stamps.items():  # keep them for the next try
                if stamp > self.pending.get(slot, 0.0):
                    self.pending[slot] = stamp
            return
        for number in range(COUNTERS):
            self.counts[number] -= counts[number]

    def snapshot(self) -> array[float]:
        """The shared array, with this handle's pending stamps and counts merged in."""
        try:
            shared = self._unpack(self.segment.get(STAMPS, None))
        except (CorruptSegment, SerializationError, UnsafeSegment):
            shared = self._blank()  # the next flush replaces it
        for number in range(COUNTERS):
            shared[number] += self.counts[number]
        for slot, stamp in list(self.pending.items()):  # a copy: other threads add to it
            shared[COUNTERS + slot] = max(shared[COUNTERS + slot], stamp)
        return shared


class Evictor:
    """Makes room for writes that do not fit, for one handle (``policy="lru"``).

    Args:
        segment: The cache's segment.
        recency: The handle's :class:`Recency`; evictions are counted in it.
        codec: The name of the cache's codec.
    """

    def __init__(self, segment: Segment, recency: Recency, codec: str) -> None:
        self.segment = segment
        self.recency = recency
        self.codec = codecs.get_codec(codec)
        self._candidates: list[int] = []
        self._listed = 0  # how long the list was when made
        self._listed_at = 0.0
        self._lock = threading.Lock()  # threads of this process share the list
        self._epoch = fork_epoch()

    def forget(self) -> None:
        """Drop the remembered list of entries (after ``clear()``)."""
        self._candidates = []
        self._listed = 0

    def make_room(self, full: SegmentFull, attempt: int, value: Any = None) -> bool:
        """Evict for the ``attempt``-th retry of a write that raised ``full``; whether to retry.

        A value bigger than the whole segment is not retried: evicting everything would not
        make it fit, only empty the cache. Its size comes from the error where the backend says
        (``needed``), else from encoding ``value`` (the value being stored, if any) once more.
        """
        needed = full.needed
        if needed is None and isinstance(full.__cause__, SegmentFull):
            needed = full.__cause__.needed
        if needed is None and value is not None:
            with contextlib.suppress(ShmfsError):  # it was encoded once already
                needed = len(frame.encode(self.codec, value))
        if isinstance(needed, int) and needed > self.segment.size:
            return False
        return self.evict(attempt)

    def evict(self, attempt: int) -> bool:
        """One round of eviction; whether there was anything to evict.

        The batch is 1/256 of the entries (at least 4), doubled for each round the same write
        has needed, so a big value takes a few rounds, not thousands. Four times the batch is
        sampled at random and ranked by the shared stamps; the oldest half of the sample is
        read, so an entry another process wrote a moment ago (its stamp not shared yet) is
        ranked by its write time, and expired entries rank first; the expired ones and at most
        the older half of the live ones go, all under the lock. Like Redis's sampled LRU, this
        never scans every entry.
        """
        if self._epoch != fork_epoch():  # a lock held by another thread at the fork stays held
            self._epoch, self._lock = fork_epoch(), threading.Lock()
        with self._lock:
            return self._evict(attempt)

    def _evict(self, attempt: int) -> bool:
        segment, recency = self.segment, self.recency
        now = cache_entry.clock()
        recency.flush(now)  # this handle's own recent hits must count
        # Listing a segment costs about 0.4 us a variable: reuse the list, dropping what is
        # evicted. Entries newer than the list are not candidates, which suits an LRU; but once
        # half of it is gone, what is left is the recently used half: list afresh then.
        candidates = self._candidates
        if 2 * len(candidates) <= self._listed or now - self._listed_at > _RELIST_EVERY:
            candidates = self._candidates = [i for i in segment if i >= FIRST_ENTRY]
            self._listed, self._listed_at = len(candidates), now
        if not candidates:
            return False
        stamps = recency.snapshot()
        batch = min(max(4, len(candidates) // 256) << attempt, len(candidates))
        picks = random.sample(range(len(candidates)), min(4 * batch, len(candidates)))
        picks.sort(key=lambda pick: stamps[COUNTERS + (candidates[pick] & recency.mask)])
        ranked: list[tuple[float, int, int]] = []  # (last use, pick, entries held)
        dropped: set[int] = set()  # picks no longer in the segment
        with segment.lock():
            now = cache_entry.clock()
            for pick in picks[: 2 * batch]:
                index = candidates[pick]
                try:
                    stored = segment.get(index, None)
                except ShmfsError:
                    stored = _UNREADABLE  # damaged or a stranger's: as good a victim as any
                if stored is None:
                    dropped.add(pick)  # gone since we listed it
                    continue
                held = [] if stored is _UNREADABLE else entries(stored)
                used = stamps[COUNTERS + (index & recency.mask)]
                for entry in held:
                    used = max(used, entry[3]) if live(entry, now) else float("-inf")
                    if used == float("-inf"):
                        break
                ranked.append((used, pick, max(len(held), 1)))
            ranked.sort()
            # Expired entries all go; of the live ones, at most the older half of what was read,
            # so that whatever the batch (it grows for a big value) and however stale the list,
            # the most recently used of what this round saw are kept.
            dead = sum(1 for used, _, _ in ranked if used == float("-inf"))
            live_ones = len(ranked) - dead
            count = dead + min(max(batch - dead, 0), max(live_ones // 2, min(live_ones, 1)))
            for _, pick, held_count in ranked[:count]:
                segment.remove(candidates[pick])
                recency.counts[2] += held_count
                dropped.add(pick)
        if 2 * (len(dropped) - count) > len(picks[: 2 * batch]):
            self._listed_at = 0.0  # most picks were gone already: list afresh next round
        for pick in sorted(dropped, reverse=True):  # swap-remove, highest first
            candidates[pick] = candidates[-1]
            candidates.pop()
        return True
