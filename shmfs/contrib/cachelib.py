"""A ``cachelib`` cache on :class:`shmfs.Cache`, and so a Flask-Caching backend, shared by every
worker process of the host.

    from shmfs.contrib.cachelib import ShmfsCache
    cache = ShmfsCache("myapp", default_timeout=300, size=256 * 2**20)

    # Flask-Caching
    app.config["CACHE_TYPE"] = "shmfs.contrib.flask.factory"
    app.config["CACHE_OPTIONS"] = {"name": "myapp", "size": 256 * 2**20}

cachelib's semantics, not ``Cache``'s: a timeout of ``0`` keeps an entry for ever and ``None``
means ``default_timeout`` (a ``timedelta`` counts as its seconds, rounded up); a negative timeout
expires the entry at once; ``get`` of an absent key is ``None``; ``inc``/``dec`` start an absent
key from 0. ``add``, ``inc`` and ``dec`` are atomic across processes. Values are stored by the
cache's codec (``cloudpickle`` by default); when a ``serializer`` is set on the cache (as
Flask-Caching does for ``CACHE_SERIALIZER``), values are stored as the bytes it makes instead.
The capacity is ``size`` in bytes, least recently used entries evicted first (cachelib's
``threshold``, an entry count, has no equivalent).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from shmfs.cache import Cache
from shmfs.cache.entry import KEEP, MISSING, Entry
from shmfs.contrib import UnpicklableValue
from shmfs.errors import SerializationError

try:
    from cachelib import BaseCache
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("shmfs.contrib.cachelib needs cachelib: pip install 'shmfs[flask]'") from exc

__all__ = ["ShmfsCache"]

Timeout = int | dt.timedelta | None


class ShmfsCache(BaseCache):
    """A ``cachelib.BaseCache`` shared by every process that opens the same ``name``.

    Args:
        name: The :class:`shmfs.Cache`'s name (a str) or segment key (an int).
        default_timeout: Seconds an entry lives when ``set`` names no timeout (or a
            ``timedelta``); 0: for ever.
        key_prefix: Put before every key (a str, or a callable returning one), so that several
            applications can share one cache.
        ignore_delete_many_errors: As cachelib's: whether ``delete_many`` raises
            ``RuntimeError`` when a key is still there after its delete.
        **options: :class:`shmfs.Cache`'s options: ``size``, ``backend``, ``root``, ``codec``,
            ``policy``, ``lock_timeout``, ``secret``, ``trust_uids``, ``trust_server``...

    Raises:
        The errors of :class:`shmfs.Cache` (a bad option, an unreachable backend...).
    """

    serializer: Any = None  # None: values go through the cache's codec, not through bytes

    def __init__(
        self,
        name: str | int = "cachelib",
        default_timeout: int | dt.timedelta = 300,
        *,
        key_prefix: str | Any = None,
        ignore_delete_many_errors: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(default_timeout, ignore_delete_many_errors=ignore_delete_many_errors)
        self.key_prefix = key_prefix or ""
        options["ttl"] = None  # every call passes its own, already in cachelib's terms
        self._cache = Cache(name, **options)

    @classmethod
    def factory(
        cls, app: Any, config: dict[str, Any], args: list[Any], kwargs: dict[str, Any]
    ) -> ShmfsCache:
        """Flask-Caching's backend factory: the cache ``CACHE_ARGS`` and ``CACHE_OPTIONS`` (in
        ``args`` and ``kwargs``) describe, with ``CACHE_KEY_PREFIX`` as ``key_prefix``; what
        ``CACHE_TYPE = "shmfs.contrib.flask.factory"`` calls (see ``shmfs.contrib.flask``)."""
        kwargs = dict(kwargs)
        if config.get("CACHE_KEY_PREFIX"):
            kwargs.setdefault("key_prefix", config["CACHE_KEY_PREFIX"])
        return cls(*args, **kwargs)

    @property
    def cache(self) -> Cache:
        """The :class:`shmfs.Cache` behind this one (for ``stats()``, ``memoize``...)."""
        return self._cache

    def _key(self, key: str) -> str:
        prefix = self.key_prefix if isinstance(self.key_prefix, str) else self.key_prefix()
        return f"{prefix}{key}"

    def _ttl(self, timeout: Timeout) -> float | None:
        """cachelib's timeout as ``Cache``'s ttl: ``math.inf`` for ever (0), ``None`` for
        "expired already" (negatives)."""
        seconds = self._normalize_timeout(timeout)
        if seconds == 0:
            return float("inf")
        return float(seconds) if seconds > 0 else None

    def _encode(self, value: Any) -> Any:
        return value if self.serializer is None else self.serializer.dumps(value)

    def _decode(self, stored: Any) -> Any:
        return stored if self.serializer is None else self.serializer.loads(stored)

    # ------------------------------------------------------------------------- reading

    def get(self, key: str) -> Any:
        """``key``'s value, or ``None``."""
        stored = self._cache.get(self._key(key), MISSING)
        return None if stored is MISSING else self._decode(stored)

    def get_many(self, *keys: str) -> list[Any]:
        """The values of ``keys``, in order (``None`` for each absent one)."""
        found = self._cache.get_many([self._key(key) for key in keys])
        return [
            self._decode(found[name]) if name in found else None
            for name in (self._key(key) for key in keys)
        ]

    def has(self, key: str) -> bool:
        """Whether ``key`` has a live entry (without decoding its value)."""
        return self._key(key) in self._cache

    # ------------------------------------------------------------------------- writing

    def set(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        """Store ``value`` under ``key`` (a negative timeout removes it instead).

        Returns:
            ``True``.

        Raises:
            UnpicklableValue: the codec cannot encode ``value`` (a ``pickle.PickleError``).
        """
        name, ttl = self._key(key), self._ttl(timeout)
        if ttl is None:
            self._cache.delete(name)
            return True
        try:
            self._cache.set(name, self._encode(value), ttl)
        except SerializationError as exc:
            raise UnpicklableValue.of(exc) from exc  # cachelib's PickleError
        return True

    def add(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        """Store ``value`` only if ``key`` has no live entry, atomically across processes;
        whether it did.

        Raises:
            UnpicklableValue: the codec cannot encode ``value`` (a ``pickle.PickleError``).
        """
        name, ttl = self._key(key), self._ttl(timeout)
        stored = self._encode(value)

        def claim(old: Entry | None, now: float) -> tuple[bool, Any]:
            if old is not None:
                return False, KEEP
            if ttl is None:
                return True, KEEP  # free, and expired at once: nothing to keep
            return True, (stored, None if ttl == float("inf") else now + ttl)

        try:
            return bool(self._cache.transact(name, claim))
        except SerializationError as exc:
            raise UnpicklableValue.of(exc) from exc  # cachelib's PickleError

    def set_many(self, mapping: dict[str, Any], timeout: Timeout = None) -> list[Any]:
        """Store every pair of ``mapping``, all or none; the keys stored (all: a failure
        raises, and then nothing was stored).

        Raises:
            UnpicklableValue: the codec cannot encode a value (a ``pickle.PickleError``).
        """
        ttl = self._ttl(timeout)
        if ttl is None:
            return [key for key in mapping if self.set(key, None, timeout)]
        encoded = {self._key(key): self._encode(value) for key, value in mapping.items()}
        try:
            self._cache.set_many(encoded, ttl)
        except SerializationError as exc:
            raise UnpicklableValue.of(exc) from exc  # cachelib's PickleError
        return list(mapping)

    def delete(self, key: str) -> bool:
        """Remove ``key``'s entry; whether it had a live one."""
        return self._cache.delete(self._key(key))

    def clear(self) -> bool:
        """Remove every entry of the cache (other key prefixes' too); ``True``."""
        self._cache.clear()
        return True

    def inc(self, key: str, delta: int = 1) -> Any:
        """Add ``delta`` to ``key``'s value (an absent or falsy one counts as 0), atomically
        across processes; an existing entry keeps its expiry, a new one gets
        ``default_timeout``.

        Returns:
            The new value.

        Raises:
            TypeError: the value and ``delta`` cannot be added.
        """
        ttl = self._ttl(None)

        def add(old: Entry | None, now: float) -> tuple[Any, Any]:
            new = ((None if old is None else self._decode(old[1])) or 0) + delta
            if old is not None:
                return new, (self._encode(new), old[2])
            if ttl is None:
                return new, KEEP
            return new, (self._encode(new), None if ttl == float("inf") else now + ttl)

        return self._cache.transact(self._key(key), add)

    def dec(self, key: str, delta: int = 1) -> Any:
        """``inc(key, -delta)``."""
        return self.inc(key, -delta)

    def close(self) -> None:
        """Detach this handle; the entries stay for the other processes."""
        self._cache.close()
