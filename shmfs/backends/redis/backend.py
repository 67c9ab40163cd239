"""The redis backend: segments on a Redis server, for users who outgrow one machine.

Key layout, for segment key K (all keys of a segment share the hash tag ``{K}``, so a Redis
Cluster keeps them on one node)::

    shmfs:{K}:meta     hash: size, perm, used, created, creator_pid, owner, epoch
    shmfs:{K}:vars     hash: index -> the value's frame (shmfs.codecs)
    shmfs:{K}:gen      hash: index -> a counter bumped on every write or removal
    shmfs:{K}:lock     string: the explicit lock holder's token, with an expiry
    shmfs:{K}:changes  pub/sub channel: an index is published after each change

Every change is one script call (:mod:`shmfs.backends.redis.ops`, the scripts in
:mod:`shmfs.backends.redis.scripts`); the explicit lock, ``with seg.lock()``, is a lease
(:mod:`shmfs.backends.redis.lease`). Who is trusted to have written pickles is decided per
connection: when the client connects, and again on each reconnection and at least every
``TRUST_RECHECK`` seconds (:mod:`shmfs.backends.redis.connection`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import secrets
import threading
import time
import warnings
import weakref
from typing import Any, Final, Self

import redis

from shmfs import hotpath
from shmfs.backends import SegmentInfo, refuse_options
from shmfs.backends.redis import listing, reply, scripts
from shmfs.backends.redis.call import Script, command, run
from shmfs.backends.redis.connection import (
    client as make_client,
)
from shmfs.backends.redis.connection import (
    close as close_client,
)
from shmfs.backends.redis.connection import (
    default_url,
    no_listener_on,
    no_network_listener,
    redacted,
    socket_private,
)
from shmfs.backends.redis.guard import Guard
from shmfs.backends.redis.lease import Lease
from shmfs.backends.redis.ops import Operations
from shmfs.backends.redis.watcher import PubSubWatcher
from shmfs.errors import CorruptSegment, InvalidArgument, UnsafeSegment
from shmfs.forking import fork_epoch
from shmfs.frame import Pieces
from shmfs.locking import HoldsSegmentLock, ReentrantLock
from shmfs.packed import unpack_many

__all__ = ["TRUST_RECHECK", "RedisBackend", "default_url"]

_DEFAULT_EXPIRY: Final = 10.0
_MIN_EXPIRY: Final = 0.1
#: Seconds a "nobody else can reach this server" verdict is kept before it is checked again,
#: besides on every new connection: a listener added at run time (``CONFIG SET port``) stops
#: pickles from being trusted within this time.
TRUST_RECHECK: Final = 1.0
_READ_MANY: Final = Script(scripts.READ_MANY)


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


def _flag(options: dict[str, Any], name: str) -> bool:
    value = options.pop(name, False)
    if not isinstance(value, bool):
        raise InvalidArgument(f"{name} must be True or False")
    return value


def _check_eviction(client: redis.Redis, url: str, allow: bool) -> None:
    """Refuse a server that may evict keys, unless ``allow`` (then warn)."""
    try:
        policy = str(client.config_get("maxmemory-policy").get("maxmemory-policy", ""))
    except redis.ResponseError:
        return  # CONFIG disabled (managed servers): partial eviction is still detected
    if policy in {"", "noeviction"}:
        return
    what = (
        f"Redis at {redacted(url)} evicts keys at its maxmemory (maxmemory-policy {policy}): "
        "it may drop part of a segment (values vanish; detected later as CorruptSegment) or, "
        "with a volatile-* policy, a held lock"
    )
    if not allow:
        raise UnsafeSegment(
            f"{what}; set maxmemory-policy noeviction, or attach with allow_eviction=True",
            url=redacted(url),
        )
    warnings.warn(what, RuntimeWarning, stacklevel=5)


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
        self.atomic = Operations(
            key,
            keys=self._keys,
            guard=self._guard,
            lease=self._lease,
            client=self._client_now,
            token=self._held_token,
            size=lambda: self.size,
        )
        self._trust_server = trust_server
        # Only a unix socket can be private; the server's listeners are checked per connection.
        self._by_socket = not trust_server and socket_private(url, trust_uids)
        self._verdict = False
        self._checked = -math.inf
        self._verdict_lock = threading.Lock()
        self._connect()

    def _connect(self) -> None:
        # After fork too: a socket shared with the parent would interleave both processes'
        # replies, and the parent's lock state is not ours.
        self._epoch = fork_epoch()
        me = weakref.ref(self)  # the pool keeps the hook: it must not keep the handle alive

        def connected(connection: Any) -> None:
            backend = me()
            if backend is not None:
                backend._connected(connection)

        self._client = client = make_client(self.url, connected)
        self._open_script = client.register_script(scripts.OPEN)
        self._version_script = client.register_script(scripts.VERSION)
        self._lease.bind(client)
        parent = self._lock
        self._lock = ReentrantLock(f"segment {self.key}", self._take, self._give)
        self._lock.inherit(parent)

    def _connected(self, connection: Any) -> None:
        """Each new connection: judge the server again, release what could not be released."""
        if self._by_socket:
            verdict = no_listener_on(connection)
            with self._verdict_lock:
                self._verdict, self._checked = verdict, time.monotonic()
        self._lease.on_connect(connection)

    def _client_now(self) -> redis.Redis:
        return self.client

    def _held_token(self) -> str:
        """The lock's token if this thread holds it (the scripts fence on it), else ``""``."""
        if self._epoch != fork_epoch():
            self._connect()  # a forked child holds none of its parent's lock (inherit())
        lock = self._lock
        return self._token if lock is not None and lock.held else ""

    @property
    def client(self) -> redis.Redis:
        """The connection pool, reopened in a forked child."""
        if self._epoch != fork_epoch():
            self._connect()
        assert self._client is not None
        return self._client

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

        Options: ``lock_expiry`` (seconds a dead holder elsewhere keeps the lock, default 10),
        ``trust_server`` (decode pickles read from this server whoever can reach it) and
        ``allow_eviction`` (accept, with a warning, a server whose maxmemory-policy evicts).
        """
        lock_expiry = _lock_expiry(options)
        trust_server = _flag(options, "trust_server")
        allow_eviction = _flag(options, "allow_eviction")
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
                client = backend.client
                _check_eviction(client, backend.url, allow_eviction)
                args: list[str | int | float] = [
                    *(size, perm, time.time(), os.getpid(), os.geteuid()),
                    secrets.token_hex(8),
                ]
                got = backend._open_script(keys=[backend._meta], args=args)
            backend.size, backend.perm = int(got[0]), int(got[1])
        except ValueError as exc:
            backend.close()
            raise CorruptSegment(f"segment {key}: damaged metadata on the server", key=key) from exc
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
        """The frame of ``index``, or ``None``: one ``HGET``."""
        client = self.client
        with self._guard:
            data = command(
                client, self._guard.url, "HGET", self._vars, index, changes=False, key=self._vars
            )
            if data is None:
                listing.check_whole(client, self.key)
        return data if data is None or isinstance(data, bytes) else bytes(data)

    def read_many(self, indexes: list[int]) -> list[bytes | None]:
        """The frames of ``indexes`` (``None``: absent) in one step: one ``HMGET``."""
        return unpack_many(self.read_packed(indexes), len(indexes), self.key)

    def read_packed(self, indexes: list[int]) -> bytes:
        """The frames of ``indexes`` in one step, packed in one string as ``READ_MANY`` packs
        them (:func:`unpack_many` reads it): one ``HMGET`` whose reply the C module reads off
        the socket (:mod:`.reply`); without the C module, one script call, whose one bulk
        string costs redis-py's parser one read, where an ``HMGET``'s reply is parsed value by
        value."""
        client = self.client
        with self._guard:
            if hotpath.resp_many() is not None:
                packed, absent = command(
                    client,
                    self._guard.url,
                    changes=False,
                    key=self._vars,
                    packed=reply.hmget(self._vars, indexes),
                    reader=functools.partial(reply.read_many, count=len(indexes)),
                )
            else:
                packed, absent = run(
                    client,
                    self._guard.url,
                    _READ_MANY,
                    [self._vars],
                    [" ".join(map(str, indexes))],
                    changes=False,
                )
            if absent:
                listing.check_whole(client, self.key)
        return packed if isinstance(packed, bytes) else bytes(packed)

    def _writable(self) -> None:
        """Reconnect after fork; refuse a write in a section of the parent's lock (the child
        holds none of it: see ``ReentrantLock.inherit``)."""
        self.client  # noqa: B018  # reconnects after fork
        assert self._lock is not None
        self._lock.check_writable()

    def write(self, index: int, data: bytes | Pieces) -> None:
        """Store ``data`` (lock held): one script, as ``atomic.commit`` does."""
        self._writable()
        self.atomic.commit(index, bytes(data), ("any", None), None)

    def delete(self, index: int) -> bool:
        """Remove ``index`` (lock held); whether it existed. Redis frees the bytes."""
        self._writable()
        return self.atomic.discard(index, None)

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
        """``trust_server=True``, or a server only trusted users can reach, as judged on the
        latest connection and at most ``TRUST_RECHECK`` seconds ago."""
        del index
        if self._trust_server:
            return True
        if not self._by_socket:
            return False
        if time.monotonic() - self._checked > TRUST_RECHECK:
            client = self.client
            with self._guard:
                verdict = no_network_listener(client)
            with self._verdict_lock:
                self._verdict, self._checked = verdict, time.monotonic()
        return self._verdict

    def version(self, index: int) -> object:
        """The index's write counter; ``None`` if it holds no value."""
        self.client  # noqa: B018  # reconnects after fork
        with self._guard:
            found = self._version_script(keys=[self._vars, self._gen], args=[index])
        return found[0] if found else None

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

    def _close_now(self) -> None:
        """Close the connection pool. Idempotent."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):  # closing must not fail a detach
                close_client(client)

    def destroy(self) -> None:
        """Delete every key of the segment (lock held) and wake its waiters."""
        self._writable()
        self.atomic.destroy(None)
