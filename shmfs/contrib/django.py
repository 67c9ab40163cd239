"""A Django cache backend on :class:`shmfs.Cache`, shared by every worker process of the host.

    CACHES = {
        "default": {
            "BACKEND": "shmfs.contrib.django.ShmfsCache",
            "LOCATION": "myapp",                    # the Cache's name: a str, or an int key
            "TIMEOUT": 300,
            "OPTIONS": {"size": 256 * 2**20},       # and backend, root, codec, policy, ...
        }
    }

Django's semantics, not ``Cache``'s: a ``timeout`` of ``None`` keeps an entry for ever, ``0`` and
negative timeouts expire it at once (``set`` removes the key, ``add`` stores nothing but says
``True`` when the key was free, ``touch`` removes it), and ``DEFAULT_TIMEOUT`` means the
``TIMEOUT`` setting; keys go through ``KEY_PREFIX``, ``VERSION`` and ``KEY_FUNCTION`` and warn as
memcached-unsafe as Django's own backends do; ``incr``/``decr`` raise ``ValueError`` for an absent
key and keep the entry's expiry. Unlike Django's default ``incr`` (a get and a set), ``incr``,
``add`` and ``touch`` are atomic across processes.

The capacity is ``OPTIONS["size"]`` in bytes, and a full cache evicts approximately least recently
used entries (``Cache``'s ``policy="lru"``), as Redis's ``maxmemory`` and memcached's ``-m`` do;
``MAX_ENTRIES`` and ``CULL_FREQUENCY`` (an entry count, culled by scanning every entry) are
refused rather than ignored, since counting entries would read every entry on each ``set``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from shmfs.cache import Cache
from shmfs.cache.entry import KEEP, Entry
from shmfs.contrib import UnpicklableValue
from shmfs.errors import SerializationError

try:
    from django.core.cache.backends.base import (
        DEFAULT_TIMEOUT,
        MEMCACHE_MAX_KEY_LENGTH,
        BaseCache,
    )
    from django.core.exceptions import ImproperlyConfigured
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("shmfs.contrib.django needs Django: pip install 'shmfs[django]'") from exc

__all__ = ["ShmfsCache"]

_CULLING = ("MAX_ENTRIES", "CULL_FREQUENCY", "max_entries", "cull_frequency")


class ShmfsCache(BaseCache):  # type: ignore[misc]  # Django ships no type information
    """A Django cache backend (``CACHES[...]["BACKEND"] = "shmfs.contrib.django.ShmfsCache"``).

    Args:
        location: ``LOCATION``: the name of the :class:`shmfs.Cache` (a str, hashed to a segment
            key) or its segment key (an int); every process naming it shares the entries.
        params: The rest of the ``CACHES`` entry. ``OPTIONS`` are :class:`shmfs.Cache`'s own
            (``size``, ``backend``, ``root``, ``codec``, ``policy``, ``lock_timeout``,
            ``secret``, ``trust_uids``, ``trust_server``...), lower-case as shmfs spells them.

    Raises:
        django.core.exceptions.ImproperlyConfigured: no ``LOCATION``, or ``MAX_ENTRIES`` /
            ``CULL_FREQUENCY`` given (the cache is bounded by ``size``; see the module).
        The errors of :class:`shmfs.Cache` (a bad option, an unreachable backend...).
    """

    def __init__(self, location: str | int, params: dict[str, Any]) -> None:
        options = dict(params.get("OPTIONS") or {})
        culling = [name for name in _CULLING if name in options or name in params]
        if culling:
            raise ImproperlyConfigured(
                f"{', '.join(culling)}: shmfs.contrib.django.ShmfsCache is bounded by bytes, "
                "not entries: set OPTIONS['size'] (the least recently used entries are evicted "
                "when it is full)"
            )
        if location in ("", None):
            raise ImproperlyConfigured(
                "shmfs.contrib.django.ShmfsCache needs a LOCATION: the name every process of "
                "the application shares the cache by (a str, or a System V key as an int)"
            )
        super().__init__(params)
        # ttl=None: every call passes its own, already in Django's terms.
        options["ttl"] = None
        self._cache = Cache(location, **options)

    @property
    def cache(self) -> Cache:
        """The :class:`shmfs.Cache` behind this backend (for ``stats()``, ``memoize``...)."""
        return self._cache

    def _ttl(self, timeout: Any) -> float | None:
        """Django's timeout as ``Cache``'s ttl: ``math.inf`` for ever, ``None`` for "expired
        already" (0 and negatives)."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return math.inf
        return float(timeout) if timeout > 0 else None

    def validate_key(self, key: Any) -> None:
        """Warn (``CacheKeyWarning``) about a key memcached would refuse, as Django does.

        Django's check runs a regular expression through a lazy proxy on every call, which
        cost as much as the shared-memory get itself; a key of at most 250 printable ASCII
        characters without a space (memcached refuses ``[\\x00-\\x20\\x7f]``) is known good
        without it, and any other goes through Django's own check.
        """
        if (
            type(key) is str
            and len(key) <= MEMCACHE_MAX_KEY_LENGTH
            and key.isascii()
            and key.isprintable()
            and " " not in key
        ):
            return
        super().validate_key(key)

    # ------------------------------------------------------------------------- reading

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        """Return ``key``'s value, or ``default`` when it has none (a stored ``None`` is a
        value)."""
        return self._cache.get(self.make_and_validate_key(key, version=version), default)

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        """The values of those ``keys`` that have one, by key."""
        names = {self.make_and_validate_key(key, version=version): key for key in keys}
        return {names[name]: value for name, value in self._cache.get_many(names).items()}

    def has_key(self, key: Any, version: int | None = None) -> bool:
        """Whether ``key`` has a live entry."""
        return self.make_and_validate_key(key, version=version) in self._cache

    # ------------------------------------------------------------------------- writing

    def set(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        """Store ``value`` under ``key``; a timeout of 0 or less removes ``key`` instead.

        Raises:
            UnpicklableValue: the codec cannot encode ``value`` (a ``pickle.PickleError``).
        """
        name = self.make_and_validate_key(key, version=version)
        self._store(name, value, self._ttl(timeout))

    def _store(self, name: str, value: Any, ttl: float | None) -> None:
        if ttl is None:
            self._cache.delete(name)
            return
        try:
            self._cache.set(name, value, ttl)
        except SerializationError as exc:
            raise UnpicklableValue.of(exc) from exc  # Django's PickleError

    def set_many(
        self, data: dict[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[Any]:
        """Store every pair of ``data``, all or none; the keys that failed (none: a failure
        raises, and then nothing was stored).

        Raises:
            UnpicklableValue: the codec cannot encode a value (a ``pickle.PickleError``).
        """
        ttl = self._ttl(timeout)
        named = {
            self.make_and_validate_key(key, version=version): value for key, value in data.items()
        }
        if ttl is None:
            for name in named:
                self._cache.delete(name)
            return []
        try:
            self._cache.set_many(named, ttl)
        except SerializationError as exc:
            raise UnpicklableValue.of(exc) from exc  # Django's PickleError
        return []

    def add(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        """Store ``value`` only if ``key`` has no live entry, atomically across processes.

        Returns:
            Whether ``key`` was free (with a timeout of 0 or less, nothing is stored then).

        Raises:
            UnpicklableValue: the codec cannot encode ``value`` (a ``pickle.PickleError``).
        """
        name = self.make_and_validate_key(key, version=version)
        ttl = self._ttl(timeout)

        def claim(old: Entry | None, now: float) -> tuple[bool, Any]:
            if old is not None:
                return False, KEEP
            if ttl is None:
                return True, KEEP  # free, and expired at once: nothing to keep
            return True, (value, None if ttl == math.inf else now + ttl)

        try:
            return bool(self._cache.transact(name, claim))
        except SerializationError as exc:
            raise UnpicklableValue.of(exc) from exc  # Django's PickleError

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        """Give ``key``'s entry a new timeout (0 or less: remove it); whether it had one."""
        name = self.make_and_validate_key(key, version=version)
        ttl = self._ttl(timeout)
        if ttl is None:
            return self._cache.delete(name)
        return self._cache.touch(name, ttl)

    def delete(self, key: Any, version: int | None = None) -> bool:
        """Remove ``key``'s entry; whether it had a live one."""
        return self._cache.delete(self.make_and_validate_key(key, version=version))

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        """Remove the entries of ``keys``."""
        for key in keys:
            self._cache.delete(self.make_and_validate_key(key, version=version))

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        """Add ``delta`` to ``key``'s value, atomically across processes; the entry keeps its
        expiry.

        Returns:
            The new value.

        Raises:
            ValueError: ``key`` has no live entry.
            TypeError: its value and ``delta`` cannot be added.
        """
        name = self.make_and_validate_key(key, version=version)

        def add(old: Entry | None, now: float) -> tuple[Any, Any]:
            if old is None:
                raise ValueError(f"Key '{key}' not found")
            new = old[1] + delta
            return new, (new, old[2])

        return self._cache.transact(name, add)

    def decr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        """``incr(key, -delta)``."""
        return self.incr(key, -delta, version=version)

    def clear(self) -> None:
        """Remove every entry of the cache: the other applications' and key prefixes' too, as
        Django's ``clear`` does."""
        self._cache.clear()

    def close(self, **kwargs: Any) -> None:
        """Nothing: Django calls it after every request, and the shared memory stays mapped for
        the next one (as a connection pool stays open). :meth:`Cache.close` through
        :attr:`cache` detaches for good."""

    # --------------------------------------------------------------------------- async
    # Every call above is a few microseconds of memory access on the local backends, far less
    # than the thread hop Django's default async methods (sync_to_async) take, so the async
    # forms run in the event loop's thread. On the redis backend each still blocks the loop for
    # one round trip to the server.

    async def aget(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        """:meth:`get`, for asyncio."""
        return self.get(key, default, version)

    async def aget_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        """:meth:`get_many`, for asyncio."""
        return self.get_many(keys, version)

    async def ahas_key(self, key: Any, version: int | None = None) -> bool:
        """:meth:`has_key`, for asyncio."""
        return self.has_key(key, version)

    async def aset(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        """:meth:`set`, for asyncio."""
        self.set(key, value, timeout, version)

    async def aset_many(
        self, data: dict[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[Any]:
        """:meth:`set_many`, for asyncio."""
        return self.set_many(data, timeout, version)

    async def aadd(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        """:meth:`add`, for asyncio."""
        return self.add(key, value, timeout, version)

    async def atouch(
        self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        """:meth:`touch`, for asyncio."""
        return self.touch(key, timeout, version)

    async def adelete(self, key: Any, version: int | None = None) -> bool:
        """:meth:`delete`, for asyncio."""
        return self.delete(key, version)

    async def adelete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        """:meth:`delete_many`, for asyncio."""
        self.delete_many(keys, version)

    async def aincr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        """:meth:`incr`, for asyncio."""
        return self.incr(key, delta, version)

    async def adecr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        """:meth:`decr`, for asyncio."""
        return self.incr(key, -delta, version)

    async def aclear(self) -> None:
        """:meth:`clear`, for asyncio."""
        self.clear()

    async def aclose(self, **kwargs: Any) -> None:
        """:meth:`close`, for asyncio."""
