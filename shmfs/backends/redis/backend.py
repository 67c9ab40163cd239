"""The redis backend: segments on a Redis server, for users who outgrow one machine.

Key layout, for segment key K (all keys of a segment share the hash tag ``{K}``, so a Redis
Cluster keeps them on one node)::

    shmfs:{K}:meta     hash: size, perm, used, created, creator_pid, owner
    shmfs:{K}:vars     hash: index -> the value's frame (shmfs.codecs)
    shmfs:{K}:gen      hash: index -> a counter bumped on every write or removal
    shmfs:{K}:lock     string: the lock holder's token, with an expiry (see below)
    shmfs:{K}:changes  pub/sub channel: an index is published after each change

Creating, writing, removing and destroying are Lua scripts (:mod:`shmfs.backends.redis.scripts`),
so each is one atomic step on the server: the size quota is checked and the bytes, the byte count
and the generation change together (a put that does not fit leaves the old value).

The lock (``with seg.lock()``, and every write) is a lease (:mod:`shmfs.backends.redis.lease`);
who is trusted to have written pickles is decided in :mod:`shmfs.backends.redis.connection`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Any, Final, Self

import redis

from shmfs.backends import SegmentInfo, refuse_options, segment_full
from shmfs.backends.redis import listing, scripts
from shmfs.backends.redis.connection import (
    client as make_client,
)
from shmfs.backends.redis.connection import (
    default_url,
    no_network_listener,
    redacted,
    socket_private,
)
from shmfs.backends.redis.guard import Guard
from shmfs.backends.redis.lease import Lease
from shmfs.backends.redis.watcher import PubSubWatcher
from shmfs.errors import CorruptSegment, InvalidArgument, SegmentNotFound
from shmfs.forking import fork_epoch
from shmfs.frame import Pieces
from shmfs.locking import HoldsSegmentLock, ReentrantLock

__all__ = ["RedisBackend", "default_url"]

_DEFAULT_EXPIRY: Final = 10.0
_MIN_EXPIRY: Final = 0.1


def _lock_expiry(options: dict[str, Any]) -> float:
    value = options.pop("lock_expiry", _DEFAULT_EXPIRY)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < _MIN_EXPIRY
    ):
        raise InvalidArgument(f"lock_expiry must be a number of seconds >= {_MIN_EXPIRY}")
    return float(value)


class RedisBackend(HoldsSegmentLock):
    """A segment stored in a Redis server."""

    name = "redis"
    native_codec = None
    lock_free_reads = True
    trust_option = "trust_server=True"

    _lock: ReentrantLock | None = None
    _client: redis.Redis | None = None

    def __init__(
        self,
        key: int,
        url: str,
        trust_uids: frozenset[int],
        *,
        lock_expiry: float,
        trust_server: bool,
    ) -> None:
        self.key = key
        self.url = url
        self.size = self.perm = 0  # read from the server by open()
        self._guard = Guard(url, key, lock_expiry)
        prefix = f"shmfs:{{{key}}}:"
        self._meta, self._vars, self._gen = prefix + "meta", prefix + "vars", prefix + "gen"
        self._lock_key, self._channel = prefix + "lock", prefix + "changes"
        self._keys = [self._lock_key, self._meta, self._vars, self._gen, self._channel]
        self._token = ""
        self._lease = Lease(key, self._lock_key, lock_expiry, self._guard)
        self._connect()
        self._trusted = trust_server or (
            socket_private(url, trust_uids) and self._call(no_network_listener, self.client)
        )

    def _connect(self) -> None:
        # After fork too: a socket shared with the parent would interleave both processes'
        # replies, and the parent's lock state is not ours.
        self._epoch = fork_epoch()
        self._client = client = make_client(self.url)
        self._open_script = client.register_script(scripts.OPEN)
        self._put = client.register_script(scripts.PUT)
        self._remove = client.register_script(scripts.REMOVE)
        self._destroy = client.register_script(scripts.DESTROY)
        self._lease.bind(client)
        self._lock = ReentrantLock(f"segment {self.key}", self._take, self._give)

    @property
    def client(self) -> redis.Redis:
        """The connection pool, reopened in a forked child."""
        if self._epoch != fork_epoch():
            self._connect()
        assert self._client is not None
        return self._client

    def _call(self, fn: Any, *args: Any) -> Any:
        with self._guard:
            return fn(*args)

    @classmethod
    def open(
        cls,
        key: int,
        size: int,
        perm: int,
        *,
        root: str | None,
        trust_uids: frozenset[int],
        **options: Any,
    ) -> Self:
        """Open segment ``key`` on the server ``root`` names, creating it if absent.

        Options: ``lock_expiry`` (seconds a dead holder elsewhere keeps the lock, default 10)
        and ``trust_server`` (decode pickles read from this server whoever can reach it).
        """
        lock_expiry = _lock_expiry(options)
        trust_server = options.pop("trust_server", False)
        if not isinstance(trust_server, bool):
            raise InvalidArgument("trust_server must be True or False")
        refuse_options(cls.name, options)
        backend = cls(
            key,
            root or default_url(),
            trust_uids,
            lock_expiry=lock_expiry,
            trust_server=trust_server,
        )
        try:
            with backend._guard:
                args = [size, perm, time.time(), os.getpid(), os.geteuid()]
                got = backend._open_script(keys=[backend._meta], args=args)
            backend.size, backend.perm = int(got[0]), int(got[1])
        except ValueError as exc:
            backend.close()
            raise CorruptSegment(f"segment {key}: damaged metadata on the server") from exc
        except BaseException:
            backend.close()
            raise
        return backend

    @classmethod
    def scope(cls, root: str | None) -> str:
        """The server."""
        return f"on Redis at {redacted(root or default_url())}"

    @classmethod
    def list_segments(cls, root: str | None) -> list[SegmentInfo]:
        """Every segment on the server."""
        return listing.list_segments(root or default_url())

    # ------------------------------------------------------------------ locking

    def _take(self, timeout: float | None) -> None:
        self._token = self._lease.take(timeout)

    def _give(self) -> None:
        token, self._token = self._token, ""
        self._lease.give(token)

    def acquire(self, timeout: float | None) -> None:
        """Take the segment lock (re-entrant for this thread)."""
        if self._epoch != fork_epoch():
            self._connect()
        assert self._lock is not None
        # A destroyed segment is reported by the scripts that write and the reads that miss:
        # checking here too would cost every write another round trip.
        self._lock.acquire(timeout)

    # ---------------------------------------------------------------- variables

    def read(self, index: int) -> bytes | None:
        """The frame of ``index``, or ``None``."""
        client = self.client
        with self._guard:
            data = client.hget(self._vars, str(index))
            if data is None and not client.exists(self._meta):
                raise SegmentNotFound(f"segment {self.key} was destroyed", key=self.key)
        return data if data is None or isinstance(data, bytes) else data.encode()

    def write(self, index: int, data: bytes | Pieces) -> None:
        """Store ``data``: the lock, quota check and write are one script (lock held)."""
        data = bytes(data)  # always bytes already: this class does not set writes_pieces
        self.client  # noqa: B018  # reconnects after fork
        with self._guard:
            stored, used = self._put(keys=self._keys, args=[self._token, index, data])
        if not stored:
            raise segment_full(self.key, index, len(data), self.size, int(used))

    def delete(self, index: int) -> bool:
        """Remove ``index`` (lock held); whether it existed. Redis frees the bytes."""
        self.client  # noqa: B018  # reconnects after fork
        with self._guard:
            return bool(self._remove(keys=self._keys, args=[self._token, index]))

    def indices(self) -> list[int]:
        """Indices holding values, ascending."""
        client = self.client
        with self._guard:
            return sorted(int(name) for name in client.hkeys(self._vars))

    def count(self) -> int:
        """Number of variables."""
        client = self.client
        with self._guard:
            return int(client.hlen(self._vars))

    def trusted(self, index: int) -> bool:
        """See the module docstring: ``trust_server=True``, or a server only trusted users
        can reach."""
        del index
        return self._trusted

    def version(self, index: int) -> object:
        """The index's write counter; ``None`` if it holds no value."""
        client = self.client
        with self._guard:
            pipe = client.pipeline(transaction=True)
            pipe.hexists(self._vars, str(index))
            pipe.hget(self._gen, str(index))
            exists, generation = pipe.execute()
        return generation if exists else None

    def watcher(self) -> PubSubWatcher:
        """A subscription to the segment's change channel."""
        client = self.client
        with self._guard:
            return PubSubWatcher(client, self._channel, self._guard)

    def info(self) -> SegmentInfo:
        """Report on the segment."""
        client = self.client
        with self._guard:
            return listing.segment_info(client, self.key, self.url)

    def close(self) -> None:
        """Close the connection pool. Idempotent."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):  # closing must not fail a detach
                client.close()

    def destroy(self) -> None:
        """Delete every key of the segment (lock held) and wake its waiters."""
        self.client  # noqa: B018  # reconnects after fork
        with self._guard:
            self._destroy(keys=self._keys, args=[self._token])
