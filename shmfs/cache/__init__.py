"""``shmfs.Cache``: a local cache shared by processes, on one segment.

Built on the public :class:`~shmfs.Segment` API only (attach, get, get_fast, put,
put_if_head, fast_put, remove, lock, watch), so it works on every backend. The parts, each in
its own module of this package:

* ``keys``: a str name to a segment key, a key (str, bytes, int, tuples of them) to
  a canonical str and a variable index, both by BLAKE2b; memoize's call keys.
* ``entry``: what a variable holds (one entry, or a bucket of the entries whose
  indices collide), the expiry rule (absolute wall-clock deadlines), and the locked
  read-modify-write every write goes through, so ``add``, ``incr``, ``pop`` and ``touch`` are
  atomic across processes.
* ``lru``: access stamps kept apart from the entries, so a hit writes nothing; the
  shared stats counters; sampled LRU eviction when a write raises ``SegmentFull``.
* ``writes``: every write's way to the segment: the locked rewrite of one entry, ``set``'s
  lock-free and read-free paths, and eviction when a write does not fit.
* ``memo``: memoize, with a lease so that one process computes and the others wait; written
  against the public calls of :class:`Cache` (``peek``, ``transact``, ``watch``, ``set``).

Reads take no lock where the backend needs none. The variables below
:data:`~shmfs.cache.keys.FIRST_ENTRY` are the cache's own (index 1: stamps and counters).

Longer than 400 lines because ``Cache`` is one class, the public API, and most of its length is
the docstrings of its public calls; what it owns besides is split into the modules above.
"""

from __future__ import annotations

import contextlib
import os
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Final, TypeVar

from shmfs import hotpath
from shmfs.backends import SLOW
from shmfs.cache import entry as cache_entry
from shmfs.cache import keys as cache_keys
from shmfs.cache.entry import (
    KEEP,
    MISSING,
    Entry,
    check_ttl,
    find,
    live,
    live_keys,
    merged,
    sweep,
)
from shmfs.cache.keys import FIRST_ENTRY, name_key
from shmfs.cache.lru import Evictor, Recency
from shmfs.cache.memo import memoize
from shmfs.cache.writes import Writes
from shmfs.codecs import get_codec
from shmfs.errors import (
    InvalidArgument,
    SegmentDetached,
    SegmentFull,
    ShmfsError,
    UnsafeSegment,
    VariableNotFound,
)
from shmfs.segment import SECRET_ENV, Segment, attach
from shmfs.waiting import Watch

__all__ = ["Cache"]

_MEMO_SIZE: Final = 16384  # at most a few MiB; a 10,000-key working set fits
_F = TypeVar("_F", bound=Callable[..., Any])
#: ``change(live entry or None, now) -> (answer, (value, expires) | None | KEEP)``: see
#: :meth:`Cache.transact`.
Transaction = Callable[[Entry | None, float], tuple[Any, Any]]


def _missing(key: Any) -> VariableNotFound:
    return VariableNotFound(f"{key!r:.80} is not in the cache", key=repr(key))


class Cache:
    """A cache shared by every process that opens the same ``name``: diskcache's API (APCu's,
    for PHP users) on a shared-memory segment. A ``Cache`` pickles as a reference: unpickled in
    another process (a ``multiprocessing`` worker), it opens the same cache.

    Args:
        name: The segment key (an int), or a name mapped to one by a stable hash (a str; see
            ``shmfs.cache.keys.name_key``).
        size: Capacity in bytes when the cache is created; an existing cache keeps its own.
        ttl: Seconds an entry lives unless ``set`` says otherwise; ``None`` keeps entries until
            they are evicted or deleted.
        policy: ``"lru"`` evicts approximately least recently used entries to make room;
            ``"error"`` raises ``SegmentFull`` when the cache is full.
        backend: ``"tmpfs"``, ``"sysv"`` or ``"redis"``; default ``$SHMFS_BACKEND`` or tmpfs.
        root: Where the segment lives (see :func:`shmfs.attach`).
        codec: How values are encoded: ``cloudpickle`` (default), ``pickle``, ``json`` or
            ``php`` (``raw`` cannot hold an entry's key and expiry).
        **options: Other :func:`shmfs.attach` options: ``perm``, ``lock_timeout``, ``secret``,
            ``trust_uids``, ``sem_key``.

    Raises:
        InvalidArgument: a bad ``policy``, ``ttl`` or ``codec``, or a bad attach option.
        InvalidKeyType: ``name`` is neither an int nor a str.
        InvalidKey: an int ``name`` is 0 or outside 32 bits.
        SegmentFull: ``size`` cannot hold even the cache's bookkeeping.
        UnsafeSegment: see :func:`shmfs.attach`.
        BackendUnavailable: the backend cannot be reached.
    """

    # Class-level defaults, so close() and repr() work after a failed __init__.
    _segment: Segment | None = None
    policy = "lru"

    def __init__(
        self,
        name: int | str,
        size: int = 64 * 2**20,
        *,
        ttl: float | None = None,
        policy: str = "lru",
        backend: str | None = None,
        root: str | None = None,
        codec: str = "cloudpickle",
        **options: Any,
    ) -> None:
        if policy not in ("lru", "error"):
            raise InvalidArgument(f"policy must be 'lru' or 'error', not {policy!r}")
        if get_codec(codec).bytes_only:
            raise InvalidArgument(
                f"codec {codec!r} stores bytes only, and a cache entry holds its key and expiry "
                "too; use cloudpickle, pickle, json or php"
            )
        self.ttl = check_ttl(ttl)
        self.policy = policy
        key = name_key(name)
        segment = attach(key, size, backend=backend, root=root, codec=codec, **options)
        try:
            self._recency = Recency(segment, binary=get_codec(codec).pickle_dialect)
            self._recency.install()
        except BaseException:
            segment.detach()
            raise
        self._segment = segment
        self._read = segment.get  # bound once: the hit path is a handful of operations
        self._read_fast = segment.get_fast  # C where there is a fast path: see Segment
        self._pending = self._recency.pending
        self._counts = self._recency.counts
        self._mask = self._recency.mask
        # key -> (canonical str, index), remembered for recent keys: see slot_memo
        slots = cache_keys.slot_memo(_MEMO_SIZE)
        self._slot = slots.slot
        # A hit in one C call where the segment reads in C (see hotpath.cache_hits): bound as
        # this handle's get, unless a subclass has its own.
        read = segment.get_fast
        hits = (
            hotpath.cache_hits(
                slots,
                read,
                entry=cache_entry,
                recency=self._recency,
                counts=self._counts,
                pending=self._pending,
                mask=self._mask,
                slow_get=types.MethodType(Cache.get, self),
            )
            if read is not Segment.get_fast and type(self).get is Cache.get
            else None
        )
        if hits is not None:
            self.get = hits.get  # type: ignore[method-assign]  # the same get, in C
        # The common set in one C call too (see hotpath.cache_sets), unless a subclass has its
        # own set.
        sets = (
            hotpath.cache_sets(
                slots,
                segment.fast_put(),
                cache=self,
                entry=cache_entry,
                recency=self._recency,
                pending=self._pending,
                mask=self._mask,
                slow_set=types.MethodType(Cache.set, self),
            )
            if type(self).set is Cache.set
            else None
        )
        if sets is not None:
            self.set = sets.set  # type: ignore[method-assign]  # the same set, in C
        self._evictor = Evictor(segment, self._recency, codec)
        self._writes = Writes(
            segment, self._recency, self._evictor, evict=policy == "lru", remember=_MEMO_SIZE
        )
        # What another process needs to open the same cache: a Cache pickles as a reference,
        # and never with its secret: the receiving process supplies it (``_reopen``).
        self._spec = {
            **{option: value for option, value in options.items() if option != "secret"},
            **({"signed": True} if options.get("secret") is not None else {}),
            "name": key,
            "ttl": ttl,
            "policy": policy,
            "backend": segment.backend,
            "root": root,
            "codec": codec,
        }

    @property
    def segment(self) -> Segment:
        """The segment holding the cache.

        Raises:
            SegmentDetached: the cache was closed.
        """
        segment = self._segment
        if segment is None:
            raise SegmentDetached("this Cache was never opened (its __init__ failed)")
        return segment

    # ------------------------------------------------------------------------- keys

    def _life(self, ttl: float | None) -> float | None:
        return self.ttl if ttl is None else check_ttl(ttl)

    # ---------------------------------------------------------------------- reading

    def get(self, key: Any, default: Any = None) -> Any:
        """Return the value of ``key``'s live entry, or ``default`` (APCu: ``apcu_fetch``).

        Raises:
            InvalidKeyType: ``key`` is not a str, bytes, int or tuple of them.
            UnsafeSegment: the entry was written by a user outside ``trust_uids``.
            CorruptSegment: the stored bytes fail their checks.
            SegmentDetached: the cache was closed.
            SegmentNotFound: the cache was destroyed.
        """
        text, index = self._slot(key)
        stored = self._read_fast(index)
        if stored is SLOW:
            stored = self._read(index, None)
        now = cache_entry.clock()
        if stored is not None:
            if type(stored) is tuple and len(stored) == 4 and stored[0] == text:
                entry: Entry | None = stored
            else:
                entry = find(stored, text)
            if entry is not None:
                expires = entry[2]  # live(), inlined: the hot path
                if (expires is None or now < expires) and entry[3] <= now:
                    self._counts[0] += 1
                    self._pending[index & self._mask] = now  # _used(), inlined: the hot path
                    if now > self._recency.due:
                        self._recency.flush(now)
                    return entry[1]
                if entry[2] is not None and now >= entry[2]:
                    self._drop_expired(index, text)  # not one from "the future": see live()
        self._counts[1] += 1
        if now > self._recency.due:
            self._recency.flush(now)
        return default

    def get_many(self, keys: Iterable[Any]) -> dict[Any, Any]:
        """Return ``{key: value}`` for those ``keys`` that have a live entry, read in one step
        (:meth:`Segment.get_many <shmfs.Segment.get_many>`: one hold of the lock, one round
        trip on redis); each key counts a hit or a miss, as :meth:`get` counts it.

        Raises:
            The errors of :meth:`get`; ``LockTimeout`` if the lock was not had in time.
        """
        slots = [(key, *self._slot(key)) for key in keys]
        stored = self.segment.get_many([index for _, _, index in slots])
        now = cache_entry.clock()
        found: dict[Any, Any] = {}
        expired: list[tuple[int, str]] = []
        for key, text, index in slots:
            entry = find(stored.get(index), text)
            if entry is not None and live(entry, now):
                found[key] = entry[1]
                self._counts[0] += 1
                self._pending[index & self._mask] = now
                continue
            self._counts[1] += 1
            if entry is not None and entry[2] is not None and now >= entry[2]:
                expired.append((index, text))  # not one from "the future": see live()
        if now > self._recency.due:
            self._recency.flush(now)
        for index, text in expired:
            self._drop_expired(index, text)
        return found

    def peek(self, key: Any, default: Any = None) -> Any:
        """Return the value of ``key``'s live entry, or ``default``, counting neither a hit nor
        a miss nor a use (for looking without disturbing the LRU or the stats).

        Raises:
            The errors of :meth:`get`.
        """
        text, index = self._slot(key)
        entry = find(self._read(index, None), text)
        return entry[1] if entry is not None and live(entry, cache_entry.clock()) else default

    def __getitem__(self, key: Any) -> Any:
        value = self.get(key, MISSING)
        if value is MISSING:
            raise _missing(key)
        return value

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` has a live entry (counts neither a hit nor a miss)."""
        return self.peek(key, MISSING) is not MISSING

    def __iter__(self) -> Iterator[Any]:
        """The keys of live entries, in no meaningful order; reads every entry (like
        diskcache's iteration, not for hot paths)."""
        return live_keys(self.segment)

    def __len__(self) -> int:
        """The number of live entries; reads every entry."""
        return sum(1 for _ in self)

    # ---------------------------------------------------------------------- writing

    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` (diskcache: ``set``; APCu: ``apcu_store``).

        Args:
            key: A str, bytes, int, or a tuple of them.
            value: Anything the cache's codec can encode.
            ttl: Seconds the entry lives; ``None``: the cache's ``ttl``; ``math.inf``: no
                expiry.

        Raises:
            InvalidKeyType: ``key`` is not a str, bytes, int or tuple of them.
            InvalidArgument: a bad ``ttl``.
            SerializationError: the codec cannot encode ``value``; the old entry stays.
            SegmentFull: no room and ``policy="error"``, or the entry is bigger than the cache.
            LockTimeout: the segment lock was not had within ``lock_timeout``.
            SegmentDetached: the cache was closed.
            SegmentNotFound: the cache was destroyed.
        """
        text, index = self._slot(key)
        self._writes.set(index, text, value, self.ttl if ttl is None else check_ttl(ttl))

    def set_many(self, mapping: Mapping[Any, Any], ttl: float | None = None) -> None:
        """Store every ``key: value`` of ``mapping``, all or none, under one hold of the lock
        (the segment's :meth:`~shmfs.Segment.put_many`): readers see all of them or none.

        Args:
            mapping: The entries to store.
            ttl: As :meth:`set`'s, for every entry.

        Raises:
            SerializationError: a value cannot be encoded; nothing was stored.
            SegmentFull: the batch does not fit even after eviction (or ``policy="error"``);
                nothing was stored.
            The errors of :meth:`set`.
        """
        life = self._life(ttl)
        planned = [(*self._slot(key), value) for key, value in mapping.items()]
        if not planned:
            return
        segment = self.segment
        attempt = 0
        with segment.lock():
            while True:
                now = cache_entry.clock()
                expires = None if life is None else now + life
                stored = segment.get_many([index for _, index, _ in planned])
                variables: dict[int, Any] = {}
                for text, index, value in planned:
                    held = variables[index] if index in variables else stored.get(index)
                    variables[index] = merged(held, (text, value, expires, now), now)
                try:
                    segment.put_many(variables)
                    break
                except SegmentFull as full:
                    # Evicting with the lock held: other writers cannot take the room first.
                    if self.policy != "lru" or not self._evictor.make_room(full, attempt):
                        raise
                    attempt += 1
        for index in variables:
            self._writes.used(index, now)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.set(key, value)

    def add(self, key: Any, value: Any, ttl: float | None = None) -> bool:
        """Store ``value`` only if ``key`` has no live entry, atomically (APCu: ``apcu_add``).

        Returns:
            Whether it was stored.

        Raises:
            The errors of :meth:`set`.
        """
        text, index = self._slot(key)
        life = self._life(ttl)

        def store(old: Entry | None, now: float) -> tuple[bool, Any]:
            if old is not None:
                return False, KEEP
            return True, (text, value, None if life is None else now + life, now)

        return bool(self._writes.write(index, text, store, value))

    def delete(self, key: Any) -> bool:
        """Remove ``key``'s entry (APCu: ``apcu_delete``).

        Returns:
            Whether ``key`` had a live entry.

        Raises:
            InvalidKeyType: ``key`` is not a str, bytes, int or tuple of them.
            LockTimeout: the segment lock was not had within ``lock_timeout``.
            SegmentDetached: the cache was closed.
            SegmentNotFound: the cache was destroyed.
        """
        text, index = self._slot(key)

        def remove(old: Entry | None, now: float) -> tuple[bool, Any]:
            return (False, KEEP) if old is None else (True, None)

        return bool(self._writes.write(index, text, remove))

    def _drop_expired(self, index: int, text: str) -> None:
        """Remove ``text``'s entry if it is still expired (a read found it so)."""
        with contextlib.suppress(ShmfsError):  # only tidying: the reader has its answer
            self._writes.write(index, text, lambda old, now: (None, KEEP if old else None))

    def __delitem__(self, key: Any) -> None:
        if not self.delete(key):
            raise _missing(key)

    def pop(self, key: Any, default: Any = MISSING) -> Any:
        """Remove ``key``'s entry and return its value, atomically.

        Args:
            key: The key.
            default: Returned when ``key`` has no live entry; without it, that raises.

        Raises:
            VariableNotFound: no live entry and no ``default`` (a ``KeyError``, as
                ``dict.pop``; diskcache returns ``None`` here).
            The errors of :meth:`delete`.
        """
        text, index = self._slot(key)

        def take(old: Entry | None, now: float) -> tuple[Any, Any]:
            return (MISSING, KEEP) if old is None else (old[1], None)

        value = self._writes.write(index, text, take)
        if value is MISSING:
            if default is MISSING:
                raise _missing(key)
            return default
        return value

    def incr(self, key: Any, delta: Any = 1, default: Any = 0) -> Any:
        """Add ``delta`` to ``key``'s value, atomically across processes (APCu:
        ``apcu_inc``). The entry keeps its expiry; a new one gets the cache's ``ttl``.

        Args:
            key: The key.
            delta: What to add.
            default: The value to start from when ``key`` has no live entry; ``None``: raise.

        Returns:
            The new value.

        Raises:
            VariableNotFound: no live entry and ``default`` is ``None``.
            InvalidArgument: the stored value and ``delta`` cannot be added.
            The errors of :meth:`set`.
        """
        text, index = self._slot(key)
        life = self.ttl

        def add(old: Entry | None, now: float) -> tuple[Any, Entry]:
            if old is None and default is None:
                raise _missing(key)
            base = default if old is None else old[1]
            try:
                new = base + delta
            except TypeError as exc:
                raise InvalidArgument(
                    f"cannot add {delta!r:.40} to the {type(base).__name__} stored under "
                    f"{key!r:.80}",
                    key=repr(key),
                ) from exc
            if old is None:
                return new, (text, new, None if life is None else now + life, now)
            return new, (text, new, old[2], now)

        return self._writes.write(index, text, add)

    def decr(self, key: Any, delta: Any = 1, default: Any = 0) -> Any:
        """Subtract ``delta``: ``incr(key, -delta, default)`` (APCu: ``apcu_dec``).

        Raises:
            The errors of :meth:`incr`.
        """
        return self.incr(key, -delta, default)

    def touch(self, key: Any, ttl: float | None = None) -> bool:
        """Give ``key``'s live entry a new expiry, ``ttl`` seconds from now.

        Args:
            key: The key.
            ttl: Seconds from now; ``None``: the cache's ``ttl``; ``math.inf``: never.

        Returns:
            Whether ``key`` had a live entry.

        Raises:
            The errors of :meth:`set`.
        """
        text, index = self._slot(key)
        life = self._life(ttl)

        def renew(old: Entry | None, now: float) -> tuple[bool, Any]:
            if old is None:
                return False, KEEP
            return True, (text, old[1], None if life is None else now + life, now)

        return bool(self._writes.write(index, text, renew))

    def transact(self, key: Any, change: Transaction, *, lease: bool = False) -> Any:
        """Rewrite ``key``'s entry with ``change``, atomically across processes, and return
        what ``change`` answers: the step ``add``, ``pop``, ``incr`` and ``touch`` are made of.

        ``change(old, now)`` gets ``key``'s live entry, ``(canonical key, value, expires,
        written)``, or ``None``, and the time (``time.time()`` seconds) the rewrite runs at; it
        returns ``(answer, new)``, where ``new`` is ``(value, expires)`` to store (``expires``
        absolute, or ``None``: never), ``None`` to remove the entry, or
        :data:`shmfs.cache.entry.KEEP` to leave it as it is. It runs under the segment lock:
        keep it short, and do not call the cache from it.

        Args:
            key: The key.
            change: The rewrite.
            lease: Rewrite ``key``'s *lease* instead of its entry: a variable of its own, which
                eviction never takes, for the processes that compute ``key``'s value to agree
                on which one does (memoize's lease).

        Returns:
            ``change``'s answer.

        Raises:
            The errors of :meth:`set`, and whatever ``change`` raises (nothing is changed then).
        """
        text, index = self._slot(key)

        def entry_of(old: Entry | None, now: float) -> tuple[Any, Any]:
            answer, new = change(old, now)
            if new is None or new is KEEP:
                return answer, new
            value, expires = new
            return answer, (text, value, expires, now)

        return self._writes.write(-index if lease else index, text, entry_of)

    def watch(self, key: Any, timeout: float | None = None) -> Watch:
        """Wake on every write of ``key``'s variable, without polling: an iterator that yields
        once for each (what it yields is the stored variable, not for use: look with
        :meth:`peek`). Close it, or use it in ``with``, to stop watching.

        Args:
            key: The key.
            timeout: Seconds to wait for each write at most; ``None`` waits for ever.

        Raises:
            WaitTimeout: (from ``next()``) no write within ``timeout``.
            InvalidKeyType: ``key`` is not a str, bytes, int or tuple of them.
            SegmentDetached: the cache was closed.
            SegmentNotFound: the cache was destroyed.
        """
        return self.segment.watch(self._slot(key)[1], timeout)

    # ------------------------------------------------------------------- housekeeping

    def expire(self) -> int:
        """Remove every expired entry now (and expired memoize leases); reads every entry.

        Returns:
            How many entries were removed.

        Raises:
            LockTimeout: the segment lock was not had within ``lock_timeout``.
            SegmentDetached: the cache was closed.
            SegmentNotFound: the cache was destroyed.
        """
        return sweep(self.segment)

    def clear(self) -> None:
        """Remove every entry, atomically with respect to other writers (APCu:
        ``apcu_clear_cache``). The stats counters stay.

        Raises:
            LockTimeout: the segment lock was not had within ``lock_timeout``.
            SegmentDetached: the cache was closed.
            SegmentNotFound: the cache was destroyed.
        """
        segment = self.segment
        with segment.lock():
            for index in list(segment):
                if not -FIRST_ENTRY < index < FIRST_ENTRY:
                    segment.remove(index)
        self._evictor.forget()

    # ------------------------------------------------------------------------ memoize

    def memoize(
        self, ttl: float | None = None, typed: bool = False, lease: float = 60.0
    ) -> Callable[[_F], _F]:
        """Decorator: cache a function's results for every process, computing each missing
        result once however many processes ask for it at the same time (APCu: ``apcu_entry``).

        The first caller to miss takes a lease and computes; the others sleep until the result
        is stored, and return it. A lease lapses after ``lease`` seconds, and one whose holder
        died on this host is taken over at once, so no caller waits much longer than ``lease``.
        Results are keyed by the function's module and qualified name and a canonical encoding
        of the arguments; ``wrapper.__cache_key__(*args, **kwargs)`` gives a call's key (to
        ``delete`` it), as with diskcache.

        Args:
            ttl: Seconds a result lives; ``None``: the cache's ``ttl``.
            typed: Tell arguments of different types apart (``f(1)``, ``f(1.0)``, ``f(True)``).
            lease: Seconds one computation may hold the other callers back.

        Returns:
            The decorator.

        Raises:
            InvalidArgument: a bad ``ttl`` or ``lease``, or ``@cache.memoize`` used without
                parentheses.
        """
        return memoize(self, ttl, typed, lease)

    # ---------------------------------------------------------------------- lifecycle

    def stats(self) -> dict[str, int]:
        """Hits, misses and evictions of every handle, and the cache's entries and bytes.

        A handle shares its counts with its first operation 50 ms or more after it last did,
        and on ``close()``, so the totals are exact once the other handles have closed (a
        killed process, or one that never closes its handle, loses what it had not shared).
        ``entries`` reads every entry; ``bytes`` is what the segment uses of ``size``,
        bookkeeping included.

        Raises:
            LockTimeout: the segment lock was not had within ``lock_timeout``.
            SegmentDetached: the cache was closed.
            SegmentNotFound: the cache was destroyed.
        """
        self._recency.flush(cache_entry.clock(), wait=True)
        shared = self._recency.snapshot()
        info = self.segment.stats()
        return {
            "hits": int(shared[0]),
            "misses": int(shared[1]),
            "evictions": int(shared[2]),
            "entries": len(self),
            "bytes": int(info["used"]),
            "size": int(info["size"]),
        }

    def close(self) -> None:
        """Share this handle's counts and detach; the cache stays for the other processes.
        Idempotent."""
        segment = self._segment
        if segment is None:
            return
        with contextlib.suppress(ShmfsError):  # detached or destroyed: counts have nowhere to go
            self._recency.flush(cache_entry.clock(), wait=True)
        segment.detach()

    def destroy(self) -> None:
        """Remove the cache and its entries for every process.

        Raises:
            LockTimeout: the segment lock was not had within ``lock_timeout``.
            SegmentDetached: the cache was closed.
            SegmentNotFound: the cache was already destroyed.
        """
        self.segment.destroy()

    def __enter__(self) -> Cache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __reduce__(self) -> tuple[Callable[..., Cache], tuple[dict[str, Any]]]:
        return _reopen, (self._spec,)

    def __repr__(self) -> str:
        segment = self._segment
        where = "unopened" if segment is None else repr(segment)
        return f"<shmfs.Cache policy={self.policy} ttl={getattr(self, 'ttl', None)} {where}>"


def _reopen(spec: dict[str, Any]) -> Cache:
    """Open the cache a pickled :class:`Cache` referred to; a signed one with the secret in
    ``$SHMFS_SECRET`` (a pickle carries none).

    Raises:
        UnsafeSegment: the cache is signed and ``$SHMFS_SECRET`` is not set here.
    """
    options = dict(spec)
    if options.pop("signed", False):
        secret = os.environ.get(SECRET_ENV)
        if not secret:
            name = options["name"]
            raise UnsafeSegment(
                f"cache {name} signs its values, and was unpickled without its secret (a "
                f"pickle carries none): set ${SECRET_ENV} in the receiving process",
                key=name,
            )
        options["secret"] = secret
    return Cache(**options)
