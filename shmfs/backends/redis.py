"""The redis backend: segments on a Redis server, for users who outgrow one machine. The one
place the ``redis`` package is imported.

Key layout, for segment key K (all keys of a segment share the hash tag ``{K}``, so a Redis
Cluster keeps them on one node)::

    shmfs:{K}:meta     hash: size, perm, used, created, creator_pid, owner
    shmfs:{K}:vars     hash: index -> the value's frame (shmfs.codecs)
    shmfs:{K}:gen      hash: index -> a counter bumped on every write or removal
    shmfs:{K}:lock     string: the lock holder's token "host:pid:random", with an expiry
    shmfs:{K}:changes  pub/sub channel: an index is published after each change

Writes and removals are Lua scripts, so the size quota is checked and the bytes, the byte count
and the generation change in one atomic step on the server (a failed put leaves the old value).
The segment lock (``with seg.lock()``, and the read-modify-writes ``incr``/``cas``/``update``)
is ``SET NX PX`` with a token naming its holder (host, pid, random part), released by a script
that deletes it only if the token is still ours. A waiter on the holder's host frees the lock of
a holder that died at once; for a holder on another host, the lock expires after
``lock_expiry`` seconds (default 30), so a dead or lost host cannot block the others for longer.
The price: a holder stalled longer than that loses exclusivity. Waiters wake through the
``changes`` channel.

**Trust.** Anyone who can reach the server can write a value, and Redis does not say who did.
Pickled values are decoded only when the server is reached through a unix socket that no
untrusted user can connect to (its owner trusted, no group/other write bit on it), or when the
caller says ``trust_server=True``; otherwise use the ``json``/``raw``/``php`` codecs or
``secret=``, which work across any server.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import stat
import time
import urllib.parse
from typing import Any, Final, Self

import redis

from shmfs.backends import SegmentInfo
from shmfs.errors import (
    BackendUnavailable,
    InvalidArgument,
    LockTimeout,
    SegmentFull,
    SegmentNotFound,
    ShmfsError,
)
from shmfs.forking import fork_epoch, pid_alive
from shmfs.locking import ReentrantLock

__all__ = ["RedisBackend"]

_FIRST_POLL: Final = 0.0005
_MAX_POLL: Final = 0.02

# KEYS: meta, vars, gen, channel. ARGV: index, data, key (for messages).
_PUT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('DESTROYED') end
local size = tonumber(redis.call('HGET', KEYS[1], 'size'))
local used = tonumber(redis.call('HGET', KEYS[1], 'used'))
local old = redis.call('HSTRLEN', KEYS[2], ARGV[1])
local new = string.len(ARGV[2])
if used - old + new > size then return {0, used - old} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'used', new - old)
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
redis.call('PUBLISH', KEYS[4], ARGV[1])
return {1, used - old + new}
"""
_REMOVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('DESTROYED') end
local old = redis.call('HSTRLEN', KEYS[2], ARGV[1])
if redis.call('HDEL', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'used', -old)
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
redis.call('PUBLISH', KEYS[4], ARGV[1])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def default_url() -> str:
    """The server used when ``root=`` names none: ``$SHMFS_REDIS_URL``, else ``$SHMFS_ROOT``
    if it is a URL, else a server on localhost."""
    root = os.environ.get("SHMFS_ROOT", "")
    fallback = root if "://" in root else "redis://localhost:6379/0"
    return os.environ.get("SHMFS_REDIS_URL", fallback)


def _redacted(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _client(url: str) -> redis.Redis:
    """A client for ``redis://``, ``rediss://`` or ``unix://`` URLs."""
    try:
        return redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30)
    except ValueError as exc:
        raise InvalidArgument(f"not a Redis URL: {_redacted(url)} ({exc})") from exc


def _socket_trusted(url: str, trust_uids: frozenset[int]) -> bool:
    """Whether only trusted users can connect: a unix socket, trusted owner, no 0o022 bits."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "unix":
        return False
    try:
        st = os.stat(parts.path)
    except OSError:
        return False
    return st.st_uid in trust_uids and not stat.S_IMODE(st.st_mode) & 0o022


class _Unavailable:
    """Turns the redis package's connection errors into ``BackendUnavailable``."""

    def __init__(self, url: str) -> None:
        self.url = _redacted(url)

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            raise BackendUnavailable(
                f"Redis at {self.url} is unreachable: {exc}", url=self.url
            ) from exc
        if isinstance(exc, redis.ResponseError) and "DESTROYED" in str(exc):
            raise SegmentNotFound("the segment was destroyed") from exc
        if isinstance(exc, redis.RedisError):
            raise ShmfsError(f"Redis at {self.url}: {exc}") from exc


class RedisBackend:
    """A segment stored in a Redis server."""

    name = "redis"
    native_codec = None
    lock_free_reads = True

    _lock: ReentrantLock | None = None

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
        self._guard = _Unavailable(url)
        self._client = _client(url)
        prefix = f"shmfs:{{{key}}}:"
        self._meta, self._vars, self._gen = prefix + "meta", prefix + "vars", prefix + "gen"
        self._lock_key, self._channel = prefix + "lock", prefix + "changes"
        self._keys = [self._meta, self._vars, self._gen, self._channel]
        self._lock_expiry_ms = int(lock_expiry * 1000)
        self._trusted = trust_server or _socket_trusted(url, trust_uids)
        self._token = ""
        self._epoch = fork_epoch()
        self._new_lock()
        self._put = self._client.register_script(_PUT)
        self._remove = self._client.register_script(_REMOVE)
        self._release_script = self._client.register_script(_RELEASE)

    def _new_lock(self) -> None:
        self._lock = ReentrantLock(f"segment {self.key}", self._take, self._give)

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

        Options: ``lock_expiry`` (seconds, default 30) and ``trust_server`` (decode pickles
        from this server even without a private unix socket).
        """
        lock_expiry = float(options.pop("lock_expiry", 30.0))
        trust_server = bool(options.pop("trust_server", False))
        if options:
            raise InvalidArgument(f"the redis backend takes no option {', '.join(sorted(options))}")
        backend = cls(
            key,
            root or default_url(),
            trust_uids,
            lock_expiry=lock_expiry,
            trust_server=trust_server,
        )
        with backend._guard:
            backend._client.hsetnx(backend._meta, "size", size)  # first creator wins the fields
            fields = {
                "perm": perm,
                "used": 0,
                "created": time.time(),
                "creator_pid": os.getpid(),
                "owner": os.geteuid(),
            }
            for field, value in fields.items():
                backend._client.hsetnx(backend._meta, field, value)
            backend.size = int(backend._client.hget(backend._meta, "size") or size)
            backend.perm = int(backend._client.hget(backend._meta, "perm") or perm)
        return backend

    @classmethod
    def scope(cls, root: str | None) -> str:
        """The server."""
        return f"on Redis at {_redacted(root or default_url())}"

    @classmethod
    def list_segments(cls, root: str | None) -> list[SegmentInfo]:
        """Every segment on the server."""
        url = root or default_url()
        client = _client(url)
        found = []
        with _Unavailable(url):
            for name in client.scan_iter(match="shmfs:{*}:meta", count=1000):
                key = int(_text(name).split("{", 1)[1].split("}", 1)[0])
                found.append(_info(client, key, url))
        return sorted(found, key=lambda info: info.key)

    # ------------------------------------------------------------------ locking

    def _check(self) -> None:
        if self._epoch != fork_epoch():
            # A socket shared with the parent would interleave both processes' replies.
            self._client = _client(self.url)
            self._put = self._client.register_script(_PUT)
            self._remove = self._client.register_script(_REMOVE)
            self._release_script = self._client.register_script(_RELEASE)
            self._new_lock()
            self._epoch = fork_epoch()

    def _take(self, timeout: float | None) -> None:
        token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"
        deadline = None if timeout is None else time.monotonic() + timeout
        poll = _FIRST_POLL
        with self._guard:
            while not self._client.set(self._lock_key, token, nx=True, px=self._lock_expiry_ms):
                holder = self._client.get(self._lock_key)
                who = _text(holder) if holder else "another process"
                pid = _holder_pid(who)
                if pid is not None and not pid_alive(pid):
                    # A holder on this host that died: free its lock now, not at expiry (the
                    # script deletes it only if it is still that holder's).
                    self._release_script(keys=[self._lock_key], args=[who])
                    continue
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"segment {self.key}: lock not acquired within {timeout} s (held by {who})",
                        holder_pid=pid,
                        timeout=timeout,
                    )
                time.sleep(poll if deadline is None else min(poll, deadline - time.monotonic()))
                poll = min(poll * 2, _MAX_POLL)
        self._token = token

    def _give(self) -> None:
        with self._guard:
            self._release_script(keys=[self._lock_key], args=[self._token])

    def acquire(self, timeout: float | None) -> None:
        """Take the segment lock (re-entrant for this thread)."""
        self._check()
        assert self._lock is not None
        # A destroyed segment is reported by the scripts that write and the reads that miss:
        # checking here too would cost every write another round trip.
        self._lock.acquire(timeout)

    def release(self) -> None:
        """Release the segment lock."""
        assert self._lock is not None
        self._lock.release()

    def lock_held(self) -> bool:
        """Whether the calling thread holds the lock."""
        return self._lock is not None and self._lock.held

    # ---------------------------------------------------------------- variables

    def read(self, index: int) -> bytes | None:
        """The frame of ``index``, or ``None``."""
        self._check()
        with self._guard:
            data = self._client.hget(self._vars, index)
            if data is None and not self._client.exists(self._meta):
                raise SegmentNotFound(f"segment {self.key} was destroyed", key=self.key)
        return data if data is None or isinstance(data, bytes) else data.encode()

    def write(self, index: int, data: bytes) -> None:
        """Store ``data``; the quota check and the write are one script."""
        self._check()
        with self._guard:
            stored, used = self._put(keys=self._keys, args=[index, data])
        if not stored:
            raise SegmentFull(
                f"segment {self.key}: a {len(data)}-byte value does not fit at index {index} "
                f"({used} of {self.size} bytes used); attach with a bigger size= or remove "
                "variables",
                key=self.key,
                index=index,
            )

    def delete(self, index: int) -> bool:
        """Remove ``index``; whether it existed. Redis frees the bytes."""
        self._check()
        with self._guard:
            return bool(self._remove(keys=self._keys, args=[index]))

    def indices(self) -> list[int]:
        """Indices holding values, ascending."""
        self._check()
        with self._guard:
            return sorted(int(name) for name in self._client.hkeys(self._vars))

    def count(self) -> int:
        """Number of variables."""
        self._check()
        with self._guard:
            return int(self._client.hlen(self._vars))

    def trusted(self, index: int) -> bool:
        """See the module docstring: a private unix socket, or ``trust_server=True``."""
        del index
        return self._trusted

    def version(self, index: int) -> object:
        """The index's write counter; ``None`` if it holds no value."""
        self._check()
        with self._guard:
            pipe = self._client.pipeline(transaction=True)
            pipe.hexists(self._vars, index)
            pipe.hget(self._gen, index)
            exists, generation = pipe.execute()
        return generation if exists else None

    def watcher(self) -> _PubSubWatcher:
        """A subscription to the segment's change channel."""
        self._check()
        with self._guard:
            return _PubSubWatcher(self._client, self._channel, self._guard)

    def info(self) -> SegmentInfo:
        """Report on the segment."""
        self._check()
        with self._guard:
            if not self._client.exists(self._meta):
                raise SegmentNotFound(f"segment {self.key} was destroyed", key=self.key)
            return _info(self._client, self.key, self.url)

    def close(self) -> None:
        """Close the connection pool. Idempotent."""
        with contextlib.suppress(Exception):
            self._client.close()

    def destroy(self) -> None:
        """Delete every key of the segment (lock held) and wake its waiters."""
        with self._guard:
            self._client.delete(self._meta, self._vars, self._gen)
            self._client.publish(self._channel, "destroyed")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _holder_pid(token: str) -> int | None:
    parts = token.split(":")
    if len(parts) == 3 and parts[0] == socket.gethostname() and parts[1].isdigit():
        return int(parts[1])
    return None


def _info(client: redis.Redis, key: int, url: str) -> SegmentInfo:
    raw = client.hgetall(f"shmfs:{{{key}}}:meta")
    meta = {_text(k): _text(v) for k, v in raw.items()}
    return SegmentInfo(
        key=key,
        backend="redis",
        size=int(meta.get("size", 0)),
        used=int(meta.get("used", 0)),
        variables=int(client.hlen(f"shmfs:{{{key}}}:vars")),
        perm=int(meta.get("perm", 0)),
        owner=int(meta.get("owner", -1)),
        location=f"{_redacted(url)} shmfs:{{{key}}}",
        created=float(meta["created"]) if "created" in meta else None,
        creator_pid=int(meta["creator_pid"]) if "creator_pid" in meta else None,
    )


class _PubSubWatcher:
    """Waiting on a Redis segment: a subscription to its change channel."""

    def __init__(self, client: redis.Redis, channel: str, guard: _Unavailable) -> None:
        self._guard = guard
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]  # redis-py leaves pubsub() unannotated
        self._pubsub.subscribe(channel)

    def fileno(self) -> int | None:
        """No descriptor is exposed: asyncio waiters poll."""
        return None

    def wait(self, timeout: float) -> None:
        """Sleep until a change is published or ``timeout`` passes."""
        with self._guard:
            self._pubsub.get_message(timeout=timeout)
            while self._pubsub.get_message(timeout=0):
                pass

    def drain(self) -> None:
        """Forget delivered messages."""
        with self._guard:
            while self._pubsub.get_message(timeout=0):
                pass

    def close(self) -> None:
        """Unsubscribe."""
        with contextlib.suppress(Exception):
            self._pubsub.close()
