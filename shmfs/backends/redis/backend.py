"""The redis backend: segments on a Redis server, for users who outgrow one machine. The one
place the ``redis`` package is imported.

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

**The lock** (``with seg.lock()``, and every write: ``incr``/``cas``/``update`` are
read-modify-writes under it) is ``SET NX PX`` with a token ``host:pid:space:random``, where
``space`` names the kernel boot and PID namespace, released by a script that deletes it only
if the token is still ours. Failure modes:

- *A holder dies on this host, in our PID namespace*: a waiter sees the pid is gone and frees
  the lock at once. Only then: a pid means nothing in another namespace (containers with host
  networking share a hostname but not pids), so the hostname alone is never trusted for it.
- *A holder dies elsewhere* (another host, container or namespace): its lock expires after
  ``lock_expiry`` seconds (default 10). While a holder lives, a daemon thread
  (:mod:`shmfs.backends.redis.renewal`) extends its lock every third of that, so a long critical
  section keeps it.
- *A holder stalls longer than the expiry* (SIGSTOP, a paused VM, cut off from the server): it
  loses exclusivity, and another process may take the lock. Its late writes cannot clobber the
  new holder's: every write script checks the token first (a fencing check), and a holder whose
  lock is gone gets ``LockTimeout`` with nothing written. What it did outside shmfs in the
  meantime, no lock can undo.

**Trust.** Anyone who can reach the server can write a value, and Redis does not say who did.
Pickled values are decoded only when the caller says ``trust_server=True``, or when no
untrusted user can reach the server: the URL is a unix socket owned by a trusted uid with no
group/other write bit, in a directory others cannot write to (or a sticky one), and the server
reports no TCP or TLS port (``CONFIG GET``: Debian's default server listens on 127.0.0.1:6379 as
well, where any local user can write). Elsewhere use ``secret=`` or the ``json``/``raw``/``php``
codecs, which are safe across any server.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import socket
import stat
import time
import urllib.parse
from typing import Any, Final, Self

import redis

from shmfs.backends import SegmentInfo, refuse_options, segment_full
from shmfs.backends.redis import scripts
from shmfs.backends.redis.renewal import renewer
from shmfs.backends.redis.url import default_url, redacted
from shmfs.errors import (
    BackendUnavailable,
    CorruptSegment,
    InvalidArgument,
    LockTimeout,
    SegmentNotFound,
    ShmfsError,
)
from shmfs.forking import fork_epoch, pid_alive
from shmfs.frame import Pieces
from shmfs.locking import HoldsSegmentLock, ReentrantLock

__all__ = ["RedisBackend", "default_url"]

_FIRST_POLL: Final = 0.0005
_MAX_POLL: Final = 0.02
_DEFAULT_EXPIRY: Final = 10.0
_MIN_EXPIRY: Final = 0.1


def _pid_space() -> str | None:
    """The kernel boot and PID namespace this process's pids mean something in, or ``None``."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as boot:
            boot_id = boot.read().strip().replace("-", "")[:12]
        return f"{boot_id}-{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return None


_HOST: Final = socket.gethostname().replace(":", "_")
# Unchanged by fork (a child stays in its parent's PID namespace), so computed once.
_SPACE: Final = _pid_space()


_redacted = redacted


def _client(url: str) -> redis.Redis:
    """A client for ``redis://``, ``rediss://`` or ``unix://`` URLs."""
    try:
        return redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30)
    except ValueError as exc:
        raise InvalidArgument(f"not a Redis URL: {_redacted(url)} ({exc})") from exc


def _socket_private(url: str, trust_uids: frozenset[int]) -> bool:
    """Whether only trusted users can connect to (or replace) the unix socket ``url`` names."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "unix":
        return False
    try:
        sock = os.stat(parts.path)
        parent = os.stat(os.path.dirname(os.path.abspath(parts.path)))
    except OSError:
        return False
    # Connecting to a unix socket needs write permission on it (unix(7)).
    private = sock.st_uid in trust_uids and not stat.S_IMODE(sock.st_mode) & 0o022
    # A writable, non-sticky directory would let anyone put their own server in its place.
    replaceable = parent.st_mode & 0o022 and not parent.st_mode & stat.S_ISVTX
    return bool(private and not replaceable)


def _no_network_listener(client: redis.Redis) -> bool:
    """Whether the server says it listens on no TCP or TLS port (unknown counts as no)."""
    try:
        ports = [client.config_get(name).get(name, "0") for name in ("port", "tls-port")]
    except redis.RedisError:
        return False  # CONFIG disabled or renamed: we cannot tell, so we do not trust
    return all(str(port) == "0" for port in ports)


def _holder_pid(token: str) -> int | None:
    """The holder's pid, if it is in our PID namespace (so that we can check it is alive)."""
    parts = token.split(":")
    if _SPACE is not None and len(parts) == 4 and parts[2] == _SPACE and parts[1].isdigit():
        return int(parts[1])
    return None


def _describe(token: str) -> str:
    parts = token.split(":")
    return f"pid {parts[1]} on {parts[0]}" if len(parts) >= 2 else "another process"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _Guard:
    """Translates the redis package's errors at the boundary: an unreachable server becomes
    ``BackendUnavailable`` naming the URL (password redacted); the scripts' replies become
    ``SegmentNotFound`` and ``LockTimeout``."""

    def __init__(self, url: str, key: int | None = None, expiry: float = 0.0) -> None:
        self.url = _redacted(url)
        self.key = key
        self.expiry = expiry

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
            raise SegmentNotFound(f"segment {self.key} was destroyed", key=self.key) from exc
        if isinstance(exc, redis.ResponseError) and "LOST_LOCK" in str(exc):
            raise LockTimeout(
                f"segment {self.key}: this process lost the segment lock (it expired after "
                f"lock_expiry={self.expiry:g} s without renewal: was the process stopped or "
                "cut off from the server?); another process may have taken it, so nothing was "
                "written",
                key=self.key,
                holder_pid=None,
                timeout=self.expiry,
            ) from exc
        if isinstance(exc, redis.ResponseError) and "CORRUPT" in str(exc):
            raise CorruptSegment(
                f"segment {self.key}: damaged metadata on the server (size or used is not a "
                "number)",
                key=self.key,
            ) from exc
        if isinstance(exc, redis.RedisError):
            raise ShmfsError(f"Redis at {self.url}: {exc}", url=self.url) from exc


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
        self._expiry = lock_expiry
        self._expiry_ms = round(lock_expiry * 1000)
        self._guard = _Guard(url, key, lock_expiry)
        prefix = f"shmfs:{{{key}}}:"
        self._meta, self._vars, self._gen = prefix + "meta", prefix + "vars", prefix + "gen"
        self._lock_key, self._channel = prefix + "lock", prefix + "changes"
        self._keys = [self._lock_key, self._meta, self._vars, self._gen, self._channel]
        self._token = ""
        self._connect()
        self._trusted = trust_server or (
            _socket_private(url, trust_uids) and self._call(_no_network_listener, self.client)
        )

    def _connect(self) -> None:
        # After fork too: a socket shared with the parent would interleave both processes'
        # replies, and the parent's lock state is not ours.
        self._epoch = fork_epoch()
        self._client = client = _client(self.url)
        self._open_script = client.register_script(scripts.OPEN)
        self._put = client.register_script(scripts.PUT)
        self._remove = client.register_script(scripts.REMOVE)
        self._destroy = client.register_script(scripts.DESTROY)
        self._release_script = client.register_script(scripts.RELEASE)
        self._renew_script = client.register_script(scripts.RENEW)
        parent = self._lock
        self._lock = ReentrantLock(f"segment {self.key}", self._take, self._give)
        self._lock.inherit(parent)

    def _writable(self) -> None:
        """Reconnect after fork; refuse a write in a section of the parent's lock (its token is
        the parent's, and would pass the server's check)."""
        self.client  # noqa: B018  # reconnects after fork
        assert self._lock is not None
        self._lock.check_writable()

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
        return f"on Redis at {_redacted(root or default_url())}"

    @classmethod
    def list_segments(cls, root: str | None) -> list[SegmentInfo]:
        """Every segment on the server."""
        url = root or default_url()
        client = _client(url)
        found = []
        try:
            with _Guard(url):
                for name in client.scan_iter(match="shmfs:{*}:meta", count=1000):
                    tag = _text(name).split("{", 1)[1].split("}", 1)[0]
                    with contextlib.suppress(ValueError, SegmentNotFound):
                        found.append(_info(client, int(tag), url))  # not ours if not an int
        finally:
            client.close()
        return sorted(found, key=lambda info: info.key)

    # ------------------------------------------------------------------ locking

    def _take(self, timeout: float | None) -> None:
        token = f"{_HOST}:{os.getpid()}:{_SPACE or '-'}:{secrets.token_hex(8)}"
        deadline = None if timeout is None else time.monotonic() + timeout
        poll = _FIRST_POLL
        client = self.client
        with self._guard:
            while not client.set(self._lock_key, token, nx=True, px=self._expiry_ms):
                raw = client.get(self._lock_key)
                holder = _text(raw) if raw else ""
                if holder == token:
                    break  # our SET went through but its reply was lost, and redis-py retried
                pid = _holder_pid(holder)
                if pid is not None and not pid_alive(pid):
                    # A holder in our PID namespace that died: free its lock now, not at
                    # expiry (the script deletes it only if it is still that holder's).
                    self._release_script(keys=[self._lock_key], args=[holder])
                    continue
                if deadline is not None and time.monotonic() >= deadline:
                    who = _describe(holder) if holder else "another process"
                    raise LockTimeout(
                        f"segment {self.key}: lock not acquired within {timeout} s (held by "
                        f"{who}; a holder that died elsewhere loses it within "
                        f"lock_expiry={self._expiry:g} s)",
                        key=self.key,
                        holder_pid=pid,
                        timeout=timeout,
                    )
                time.sleep(
                    poll if deadline is None else max(min(poll, deadline - time.monotonic()), 0)
                )
                poll = min(poll * 2, _MAX_POLL)
        self._token = token
        renewer().hold(token, self._renewal(token), self._expiry / 3)

    def _renewal(self, token: str) -> Any:
        script, keys = self._renew_script, [self._lock_key]
        args: list[str | int] = [token, self._expiry_ms]

        def renew() -> bool:
            try:
                return bool(script(keys=keys, args=args))
            except redis.RedisError:
                return True  # unreachable for now: retried next period, and may still lapse

        return renew

    def _give(self) -> None:
        token, self._token = self._token, ""
        renewer().drop(token)
        with self._guard:
            # 0 if the lock expired while held: any write after that was refused already.
            self._release_script(keys=[self._lock_key], args=[token])

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
        self._writable()
        with self._guard:
            stored, used = self._put(keys=self._keys, args=[self._token, index, data])
        if not stored:
            raise segment_full(self.key, index, len(data), self.size, int(used))

    def delete(self, index: int) -> bool:
        """Remove ``index`` (lock held); whether it existed. Redis frees the bytes."""
        self._writable()
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

    def watcher(self) -> _PubSubWatcher:
        """A subscription to the segment's change channel."""
        client = self.client
        with self._guard:
            return _PubSubWatcher(client, self._channel, self._guard)

    def info(self) -> SegmentInfo:
        """Report on the segment."""
        client = self.client
        with self._guard:
            return _info(client, self.key, self.url)

    def _close_now(self) -> None:
        """Close the connection pool. Idempotent."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):  # closing must not fail a detach
                client.close()

    def destroy(self) -> None:
        """Delete every key of the segment (lock held) and wake its waiters."""
        self._writable()
        with self._guard:
            self._destroy(keys=self._keys, args=[self._token])


def _info(client: redis.Redis, key: int, url: str) -> SegmentInfo:
    pipe = client.pipeline(transaction=True)
    pipe.hgetall(f"shmfs:{{{key}}}:meta")
    pipe.hlen(f"shmfs:{{{key}}}:vars")
    raw, variables = pipe.execute()
    if not raw:
        raise SegmentNotFound(f"segment {key} was destroyed", key=key)
    meta = {_text(k): _text(v) for k, v in raw.items()}
    try:
        return SegmentInfo(
            key=key,
            backend="redis",
            size=int(meta.get("size", 0)),
            used=int(meta.get("used", 0)),
            variables=int(variables),
            perm=int(meta.get("perm", 0)),
            owner=int(meta.get("owner", -1)),
            location=f"{_redacted(url)} shmfs:{{{key}}}",
            created=float(meta["created"]) if "created" in meta else None,
            creator_pid=int(meta["creator_pid"]) if "creator_pid" in meta else None,
        )
    except ValueError as exc:
        raise CorruptSegment(f"segment {key}: damaged metadata on the server", key=key) from exc


class _PubSubWatcher:
    """Waiting on a Redis segment: a subscription to its change channel.

    ``fileno()`` is the subscription's socket, so asyncio waiters sleep in the event loop
    instead of polling. That is sound because ``drain()`` reads until redis-py has nothing
    buffered: after it, any new message makes the socket readable again.
    """

    def __init__(self, client: redis.Redis, channel: str, guard: _Guard) -> None:
        self._guard = guard
        # Subscribe confirmations are kept, not ignored: drain() stops at the first None, and an
        # ignored message reads as None while real ones may be buffered behind it.
        self._pubsub: Any = client.pubsub()  # type: ignore[no-untyped-call]  # redis-py leaves pubsub() unannotated
        self._pubsub.subscribe(channel)

    def fileno(self) -> int | None:
        """The subscription's socket, or ``None`` (then asyncio waiters poll)."""
        connection = self._pubsub.connection
        # _get_socket() is redis-py's own accessor (private, so a missing one means "poll").
        get_socket = getattr(connection, "_get_socket", None)
        sock = get_socket() if get_socket is not None else None
        return None if sock is None else int(sock.fileno())

    def wait(self, timeout: float) -> None:
        """Sleep until a change is published or ``timeout`` passes."""
        with self._guard:
            if self._pubsub.get_message(timeout=timeout) is not None:
                self._drain()

    def drain(self) -> None:
        """Forget delivered messages."""
        with self._guard:
            self._drain()

    def _drain(self) -> None:
        while self._pubsub.get_message(timeout=0) is not None:
            pass

    def close(self) -> None:
        """Unsubscribe."""
        with contextlib.suppress(Exception):  # closing must not fail the waiter's exit
            self._pubsub.close()
