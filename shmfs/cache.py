"""``shmfs.Cache``: a local cache shared by processes, on one segment.

How it maps onto a segment:

* **Keys.** A key (str, bytes, int, or a tuple of them) is encoded canonically (a type tag and
  the value's bytes, so ``1``, ``"1"`` and ``b"1"`` differ) and hashed with BLAKE2b to a
  variable index at or above 16 (indices 0-15 are reserved). The variable holds a *bucket*: a
  dict from canonical key to entry, so two keys whose hashes collide share a bucket and are
  told apart by their canonical bytes, never confused. With 63-bit hashes a bucket almost always
  holds one entry.
* **Entries** are ``(key, value, expires, accessed)``. ``expires`` is an absolute wall-clock
  time (``time.time()``): the one clock every process on a host (and every host of a Redis
  segment, given NTP) shares; ``time.monotonic()`` differs per boot and per container, so it
  cannot be stored. A clock stepped backwards makes entries live longer, never shorter; one
  stepped forwards expires them early. Expired entries are never returned, and are removed by
  writes to their bucket, by ``expire()``, and first when room is needed.
* **LRU.** Recording every hit would cost a write per read, so ``accessed`` is rewritten only
  when it is more than 10 ms old: a hot entry costs at most 100 writes a second, not one per
  hit. The handle that evicts also knows its own hits exactly. So eviction is approximately
  LRU: exact for one process's own use, at 10 ms resolution across processes.
  When a write does not fit (``SegmentFull``), entries are evicted, expired ones first, then the
  least recently accessed of a random sample of buckets (as Redis does), until it fits.
  ``policy="error"`` raises ``SegmentFull`` instead.
* **Atomicity.** Writes are read-modify-writes of one bucket under the segment lock
  (``Segment.update``), so ``add``, ``incr`` and ``pop`` are atomic across processes; reads take
  no lock where the backend needs none.
* **memoize** keeps a *lease* next to the value's bucket: the first caller to ``add`` it
  computes, the others wait (watching the bucket, so they wake as soon as the value is stored).
  A lease names its holder's pid and expires, so a holder that dies blocks no one for long.

``stats()`` counts the hits, misses and evictions of this handle (counting them in the segment
would cost a write per read) plus the segment's entries and bytes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pickle
import random
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Final, TypeVar

from shmfs.errors import (
    InvalidArgument,
    InvalidKeyType,
    LockTimeout,
    SegmentFull,
    VariableNotFound,
    WaitTimeout,
)
from shmfs.forking import pid_alive
from shmfs.segment import Segment, attach

__all__ = ["Cache", "key_index", "name_key"]

_RESERVED: Final = 16
_INDEX_SPAN: Final = (1 << 63) - _RESERVED
# Seconds between rewrites of an entry's access time on hits: a hot entry costs at most 100
# writes a second, and stays younger than anything a busy cache churns through.
_TOUCH_EVERY: Final = 0.01
_SAMPLE: Final = 16  # buckets looked at per eviction round
_LEASE: Final = 60.0  # seconds a memoize computation may take before others take over
_MISSING: Final[Any] = object()
_F = TypeVar("_F", bound=Callable[..., Any])

Entry = tuple[Any, Any, float | None, float]  # key, value, expires, accessed


def name_key(name: int | str) -> int:
    """The segment key for a cache name: an int is the key itself; a str is hashed (BLAKE2b,
    stable across processes and Python versions) into 1..2**31-1."""
    if isinstance(name, int) and not isinstance(name, bool):
        return name
    if not isinstance(name, str):
        raise InvalidKeyType(f"a cache name is an int or a str, not {type(name).__name__}")
    digest = hashlib.blake2b(b"shmfs.Cache:" + name.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % ((1 << 31) - 1) + 1


def _canonical(key: Any) -> bytes:
    """A type-tagged encoding of ``key``: equal keys, equal bytes; different types differ."""
    kind = type(key)
    if kind is str:
        return b"s" + str(key).encode("utf-8", "surrogatepass")
    if kind is bytes:
        return b"b" + bytes(key)
    if kind is int:
        return b"i" + str(key).encode()
    if kind is tuple:
        parts = [_canonical(item) for item in key]
        return b"t" + b"".join(len(part).to_bytes(4, "big") + part for part in parts)
    raise InvalidKeyType(
        f"cache keys are str, bytes, int or tuples of them, not {kind.__name__}", key=repr(key)
    )


def key_index(canonical: bytes) -> int:
    """The variable index of a canonical key's bucket (tests replace it to force collisions)."""
    digest = hashlib.blake2b(canonical, digest_size=8).digest()
    return int.from_bytes(digest, "big") % _INDEX_SPAN + _RESERVED


class Cache:
    """A cache shared by every process that opens the same ``name``.

    Args:
        name: The segment key (int), or a name hashed to one (str).
        size: Capacity in bytes when creating the segment.
        ttl: Default seconds an entry lives; ``None`` keeps entries until evicted.
        policy: ``"lru"`` evicts to make room; ``"error"`` raises ``SegmentFull``.
        **options: :func:`shmfs.attach` options (``backend``, ``root``, ``codec``,
            ``lock_timeout``, ``secret``, ``trust_uids``...).

    Raises:
        InvalidArgument: an unknown policy or a negative ttl.
        The errors of :func:`shmfs.attach`.
    """

    def __init__(
        self,
        name: int | str,
        size: int = 64 * 2**20,
        *,
        ttl: float | None = None,
        policy: str = "lru",
        **options: Any,
    ) -> None:
        if policy not in ("lru", "error"):
            raise InvalidArgument(f"policy must be 'lru' or 'error', not {policy!r}")
        if ttl is not None and ttl < 0:
            raise InvalidArgument(f"ttl must be None or >= 0 seconds, not {ttl!r}")
        self.ttl = ttl
        self.policy = policy
        self.segment: Segment = attach(name_key(name), size, **options)
        self._hits = self._misses = self._evictions = 0
        self._slots: dict[tuple[type, Any], tuple[bytes, int]] = {}
        # This handle's own last hits, by bucket: exact where the shared stamps are 10 ms coarse.
        self._recent: dict[int, float] = {}

    # ------------------------------------------------------------------- reading

    def _slot(self, key: Any) -> tuple[bytes, int]:
        """The canonical bytes and bucket index of ``key``, remembered for recent keys (hashing
        costs more than the rest of a hit). Keyed by type too, so ``1`` and ``True`` differ."""
        kind = type(key)
        if kind is not str and kind is not bytes and kind is not int:
            canonical = _canonical(key)  # tuples (and refused types) are not remembered
            return canonical, key_index(canonical)
        memo = (kind, key)
        slot = self._slots.get(memo)
        if slot is None:
            canonical = _canonical(key)
            slot = (canonical, key_index(canonical))
            if len(self._slots) >= 4096:
                self._slots.clear()
            self._slots[memo] = slot
        return slot

    def _lookup(self, key: Any, now: float) -> tuple[bytes, int, Entry | None]:
        canonical, index = self._slot(key)
        bucket = self.segment.get(index, None)
        entry = bucket.get(canonical) if bucket else None
        if entry is not None and entry[2] is not None and entry[2] <= now:
            entry = None
        return canonical, index, entry

    def get(self, key: Any, default: Any = None) -> Any:
        """Return the value of a live entry, or ``default``.

        Raises:
            InvalidKeyType: ``key`` is not a str, bytes, int or tuple of them.
        """
        now = time.time()
        canonical, index, entry = self._lookup(key, now)
        if entry is None:
            self._misses += 1
            return default
        self._hits += 1
        self._recent[index] = now
        if now - entry[3] > _TOUCH_EVERY:
            self._mark_used(index, canonical)
        return entry[1]

    def _mark_used(self, index: int, canonical: bytes) -> None:
        def touch(bucket: dict[bytes, Entry]) -> dict[bytes, Entry]:
            entry = bucket.get(canonical)
            if entry is not None:
                bucket[canonical] = (entry[0], entry[1], entry[2], time.time())
            return bucket

        with contextlib.suppress(SegmentFull, LockTimeout):  # only an access time
            self.segment.update(index, touch, default={})

    def __getitem__(self, key: Any) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise VariableNotFound(f"{key!r} is not in the cache", key=repr(key))
        return value

    def __contains__(self, key: object) -> bool:
        return self._lookup(key, time.time())[2] is not None

    def __iter__(self) -> Iterator[Any]:
        """The keys of live entries (a snapshot; order is not meaningful)."""
        now = time.time()
        for index in list(self.segment):
            if index < _RESERVED:
                continue
            for entry in (self.segment.get(index, None) or {}).values():
                if entry[2] is None or entry[2] > now:
                    yield entry[0]

    def __len__(self) -> int:
        return sum(1 for _ in self)

    # ------------------------------------------------------------------- writing

    def _expiry(self, ttl: float | None) -> float | None:
        ttl = self.ttl if ttl is None else ttl
        return None if ttl is None else time.time() + ttl

    def _change(self, key: Any, change: Callable[[Entry | None], tuple[Any, Entry | None]]) -> Any:
        """Apply ``change`` to the live entry of ``key`` (``None`` if none) under the lock;
        store the entry it returns (``None``: remove it); return its first result."""
        canonical, index = self._slot(key)
        result: list[Any] = []

        def rewrite() -> None:
            with self.segment.lock():
                bucket = self.segment.get(index, None) or {}
                now = time.time()
                live = {k: e for k, e in bucket.items() if e[2] is None or e[2] > now}
                answer, entry = change(live.get(canonical))
                if entry is None:
                    live.pop(canonical, None)
                else:
                    live[canonical] = entry
                if live:
                    self.segment.put(index, live)
                elif bucket:
                    self.segment.remove(index)  # an empty bucket takes no room
                result.append(answer)

        self._with_room(rewrite)
        return result[-1]

    def _with_room(self, write: Callable[[], Any]) -> None:
        """Run ``write``, evicting entries until it fits (policy "lru")."""
        while True:
            try:
                write()
                return
            except SegmentFull:
                if self.policy == "error" or not self._evict():
                    raise

    def _evict(self) -> bool:
        """Free room: drop expired entries, else the least recently used of a sample of
        buckets. Returns whether anything was removed."""
        if self.expire():
            return True
        indices = [index for index in self.segment if index >= _RESERVED]
        if not indices:
            return False
        sample = random.sample(indices, min(_SAMPLE, len(indices)))
        oldest: tuple[float, int] | None = None
        for index in sample:
            bucket = self.segment.get(index, None) or {}
            for entry in bucket.values():
                used = max(entry[3], self._recent.get(index, 0.0))
                if oldest is None or used < oldest[0]:
                    oldest = (used, index)
        if oldest is None:
            return False
        with self.segment.lock():
            if self.segment.pop(oldest[1], None) is None:
                return True  # removed by someone else meanwhile: that is room too
        self._recent.pop(oldest[1], None)
        if len(self._recent) > 4096:
            self._recent.clear()
        self._evictions += 1
        return True

    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (default: the cache's ttl).

        Raises:
            InvalidKeyType: ``key`` is not a str, bytes, int or tuple of them.
            SerializationError: ``value`` cannot be encoded.
            SegmentFull: no room (policy "error"), or the value alone is too big.
        """
        entry = (key, value, self._expiry(ttl), time.time())
        self._change(key, lambda old: (None, entry))

    def __setitem__(self, key: Any, value: Any) -> None:
        self.set(key, value)

    def add(self, key: Any, value: Any, ttl: float | None = None) -> bool:
        """Store ``value`` only if ``key`` has no live entry, atomically; whether it did.

        Raises:
            The errors of :meth:`set`.
        """
        entry = (key, value, self._expiry(ttl), time.time())
        return bool(self._change(key, lambda old: (False, old) if old else (True, entry)))

    def delete(self, key: Any) -> bool:
        """Remove ``key``; whether it had a live entry.

        Raises:
            InvalidKeyType: ``key`` is not a str, bytes, int or tuple of them.
        """
        return bool(self._change(key, lambda old: (old is not None, None)))

    def __delitem__(self, key: Any) -> None:
        if not self.delete(key):
            raise VariableNotFound(f"{key!r} is not in the cache", key=repr(key))

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value, atomically; ``default`` if absent.

        Raises:
            VariableNotFound: ``key`` is absent and no ``default`` was given.
        """
        value = self._change(key, lambda old: (_MISSING if old is None else old[1], None))
        if value is _MISSING:
            if default is _MISSING:
                raise VariableNotFound(f"{key!r} is not in the cache", key=repr(key))
            return default
        return value

    def incr(self, key: Any, delta: Any = 1, default: Any = 0) -> Any:
        """Add ``delta`` to the value of ``key`` (``default`` if absent), atomically; return
        the new value. The entry keeps its expiry.

        Raises:
            TypeError: the stored value does not support ``+``.
        """

        def add(old: Entry | None) -> tuple[Any, Entry]:
            if old is None:
                new = default + delta
                return new, (key, new, self._expiry(None), time.time())
            new = old[1] + delta
            return new, (old[0], new, old[2], time.time())

        return self._change(key, add)

    def decr(self, key: Any, delta: Any = 1, default: Any = 0) -> Any:
        """Subtract ``delta``: ``incr(key, -delta, default)``."""
        return self.incr(key, -delta, default)

    def touch(self, key: Any, ttl: float | None = None) -> bool:
        """Give a live entry a new expiry (``ttl`` seconds from now); whether it existed."""
        expires = self._expiry(ttl)

        def renew(old: Entry | None) -> tuple[bool, Entry | None]:
            if old is None:
                return False, None
            return True, (old[0], old[1], expires, time.time())

        return bool(self._change(key, renew))

    def expire(self) -> int:
        """Remove every expired entry now; return how many."""
        removed = 0
        now = time.time()
        with self.segment.lock():
            for index in list(self.segment):
                if index < _RESERVED:
                    continue
                bucket = self.segment.get(index, None) or {}
                live = {k: e for k, e in bucket.items() if e[2] is None or e[2] > now}
                if len(live) != len(bucket):
                    removed += len(bucket) - len(live)
                    if live:
                        self.segment.put(index, live)
                    else:
                        self.segment.remove(index)
        return removed

    def clear(self) -> None:
        """Remove every entry."""
        self.segment.clear()

    # -------------------------------------------------------------------- memoize

    def memoize(self, ttl: float | None = None, typed: bool = False) -> Callable[[_F], _F]:
        """Decorator: cache a function's results across processes, computing each missing one
        once however many processes ask at the same time (the others wait for it).

        Args:
            ttl: Seconds a result lives; default: the cache's ttl.
            typed: Tell arguments of different types apart (``1`` and ``1.0``).
        """

        def decorate(function: _F) -> _F:
            @functools.wraps(function)
            def cached(*args: Any, **kwargs: Any) -> Any:
                key = _call_key(function, args, kwargs, typed)
                value = self.get(key, _MISSING)
                if value is not _MISSING:
                    return value
                return self._compute_once(key, lambda: function(*args, **kwargs), ttl)

            return cached  # type: ignore[return-value]  # same signature, by functools.wraps

        return decorate

    def _compute_once(self, key: Any, compute: Callable[[], Any], ttl: float | None) -> Any:
        lease_key = ("shmfs.lease", key)
        watched = self._slot(key)[1]
        while True:
            lease = (os.getpid(), time.time() + _LEASE)
            if self.add(lease_key, lease, ttl=_LEASE):
                try:
                    # Stored by the previous lease holder after our miss, before our lease?
                    value = self.get(key, _MISSING)
                    if value is _MISSING:
                        value = compute()
                        self.set(key, value, ttl)
                    return value
                finally:
                    self.delete(lease_key)
            holder = self._lookup(lease_key, time.time())[2]
            if holder is not None and not pid_alive(holder[1][0]):
                self.delete(lease_key)  # its computer died: take over
                continue
            with contextlib.suppress(WaitTimeout):  # re-check the lease every 50 ms regardless
                self.segment.wait(watched, timeout=0.05)
            value = self.get(key, _MISSING)
            if value is not _MISSING:
                return value

    # ----------------------------------------------------------------- lifecycle

    def stats(self) -> dict[str, int]:
        """This handle's hits, misses and evictions; the segment's entries and bytes."""
        return {
            "hits": self._hits,
            "misses": self._misses,
            "evictions": self._evictions,
            "entries": len(self),
            "bytes": int(self.segment.stats()["used"]),
        }

    def close(self) -> None:
        """Detach; the cache and its entries stay for other processes. Idempotent."""
        self.segment.detach()

    def destroy(self) -> None:
        """Remove the cache for every process."""
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


def _call_key(
    function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], typed: bool
) -> tuple[str, bytes]:
    """A cache key for one call: the function's name and a digest of its arguments."""
    parts: tuple[Any, ...] = (args, sorted(kwargs.items()))
    if typed:
        parts += (tuple(type(arg).__qualname__ for arg in args),)
    digest = hashlib.blake2b(pickle.dumps(parts, 5), digest_size=16).digest()
    return (f"shmfs.memoize:{function.__module__}.{function.__qualname__}", digest)
