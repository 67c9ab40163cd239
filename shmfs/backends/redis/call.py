"""One command on one pooled connection, knowing whether a failed change may have been made.

redis-py's own ``execute_command`` retries a command whose connection failed, and cannot say
whether the server ran it first: a script that committed and lost its reply would run twice
(an ``incr`` counted twice). Here a change is sent once. A failure before the command left
(the server refused the connection, the socket broke while sending) is reported with
``committed=False``; a failure after it was sent, while waiting for the reply, with
``committed=None``: the change may or may not have been made, and only the caller can decide
whether to read back or retry. Reads are retried once, since running them twice is harmless.

A command the server refused before running any of it is sent again, for up to
``REDIRECT_WAIT`` seconds: a cluster node's ``MOVED`` (the slot lives elsewhere now: the
client learns the layout again), ``ASK`` (the slot is being migrated and this key is on the
importing node already: the command goes there, after ``ASKING``) and ``TRYAGAIN`` (the slot is
being migrated and the command's keys are split between the two nodes, or not all there: a
script names the change channel and the lock among its keys, never stored and absent unless
held, so a segment's scripts wait out the migration); and ``READONLY`` from a master the
Sentinels demoted.

Scripts go as ``EVALSHA``, falling back to ``EVAL`` with the source when the server does not
know the script (``NOSCRIPT``: a restarted or flushed server), which it then caches. A call
of small arguments is packed here, with the script's name and keys packed once per script and
key list: redis-py's packer, general for every argument type, cost a put more than the rest of
its client-side work.

Each thread keeps the connection it used last out of the pool (:class:`_Held`), and uses it
again while it calls the same pool: taking one from redis-py's pool and giving it back cost
more than a round trip's own work (a lock, an idle-socket probe, connection-count records).
A held connection is probed as the pool probes its idle ones (a server that closed it, by a
restart, leaves it readable), and a reply is never left unread on it: every call reads its
whole reply, and any call interrupted (an error other than the server's own error reply, a
KeyboardInterrupt) disconnects it and gives it back. A thread that ends, or
turns to another pool, gives it back too; a forked child never uses its parent's. Reached
through Sentinels, it is also dropped once they name another master (:mod:`.sentinel`).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import redis
from redis.cluster import RedisCluster
from redis.exceptions import AskError, MovedError, NoScriptError, TryAgainError

from shmfs.backends.redis.sentinel import Demoted
from shmfs.errors import BackendUnavailable
from shmfs.forking import fork_epoch

__all__ = ["REDIRECT_WAIT", "Script", "command", "run"]


# Above this many bytes a command goes through redis-py's packer, which sends a large value
# without copying it into the command (joining here would copy it once more).
_PACK_LIMIT: Final = 4096
#: Seconds a call keeps resending a command the server refused unrun because the segment's
#: hash slot is moving between cluster nodes (``TRYAGAIN``, ``MOVED``) or the master it reached
#: is a replica now (``READONLY`` after a Sentinel failover), before it gives up with
#: ``BackendUnavailable`` (nothing was changed).
REDIRECT_WAIT: Final = 5.0
_FIRST_PAUSE: Final = 0.001
_MAX_PAUSE: Final = 0.05


class Script:
    """A Lua script's source and the SHA1 the server knows it by."""

    __slots__ = ("_heads", "sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        self._heads: dict[tuple[str, ...], tuple[int, bytes]] = {}

    def packed(self, keys: list[str], args: list[Any]) -> bytes | None:
        """``EVALSHA`` of this script on ``keys`` and ``args`` in the wire protocol, or ``None``
        if an argument is not a small str, bytes or int (redis-py then packs it)."""
        head = self._heads.get(tuple(keys))
        if head is None:
            words = [b"EVALSHA", self.sha.encode(), str(len(keys)).encode()]
            words += [key.encode() for key in keys]
            head = (len(words), b"".join(b"$%d\r\n%b\r\n" % (len(w), w) for w in words))
            self._heads[tuple(keys)] = head
        count, packed = head
        parts = [b"*%d\r\n%b" % (count + len(args), packed)]
        size = 0
        for arg in args:
            kind = type(arg)
            if kind is bytes:
                word = arg
            elif kind is str:
                word = arg.encode()
            elif kind is int:
                word = b"%d" % arg
            else:
                return None
            size += len(word)
            parts.append(b"$%d\r\n%b\r\n" % (len(word), word))
        return b"".join(parts) if size <= _PACK_LIMIT else None


def _unavailable(url: str, exc: Exception, committed: bool | None) -> BackendUnavailable:
    if isinstance(exc, redis.AuthenticationError):
        return BackendUnavailable(
            f"Redis at {url}: authentication failed (check the password or user in the URL)",
            url=url,
            committed=False,
        )
    if committed is None:
        what = "the connection was lost after the change was sent: it may or may not have been made"
    else:
        what = "nothing was changed"
    return BackendUnavailable(
        f"Redis at {url} is unreachable ({what}): {exc}", url=url, committed=committed
    )


def _pool(client: Any, key: str | None) -> Any:
    """The connection pool of the server that holds ``key``: a cluster's node for its slot."""
    if key is not None and isinstance(client, RedisCluster):
        node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        return client.get_redis_connection(node).connection_pool
    return client.connection_pool


class _Held:
    """One thread's connection out of ``pool``, given back when the thread lets go of it."""

    __slots__ = ("conn", "current", "epoch", "pool")

    def __init__(self, pool: Any, conn: Any) -> None:
        self.pool, self.conn, self.epoch = pool, conn, fork_epoch()
        # A Sentinel's pool says whether a connection still reaches the master (sentinel.py).
        self.current: Callable[[Any], bool] | None = getattr(pool, "current", None)

    def give_back(self, *, broken: bool) -> None:
        conn, self.conn = self.conn, None
        if conn is None or self.epoch != fork_epoch():
            return  # a parent's connection: its socket is not this process's to use or close
        if broken:
            conn.disconnect()
        self.pool.release(conn)

    def __del__(self) -> None:  # the thread ended: its thread-local slot goes
        with contextlib.suppress(Exception):
            self.give_back(broken=False)


_held = threading.local()


def _take(pool: Any) -> Any:
    """This thread's connection of ``pool``, held out of it (see the module docstring)."""
    held: _Held | None = getattr(_held, "slot", None)
    if held is not None:
        conn = held.conn
        if held.pool is pool and conn is not None and held.epoch == fork_epoch():
            # The pool's own probe: data waiting on an idle connection means the server
            # closed it (a restart); a fresh one from the pool reconnects. So does one to a
            # master the Sentinels no longer name.
            try:
                if not conn.can_read() and (held.current is None or held.current(conn)):
                    return conn
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                pass
            _held.slot = None
            held.give_back(broken=True)
        else:
            _held.slot = None
            held.give_back(broken=False)
    conn = pool.get_connection()
    _held.slot = _Held(pool, conn)
    return conn


def _drop(conn: Any) -> None:
    """Disconnect ``conn`` after a call it did not finish and give it back to its pool."""
    held: _Held | None = getattr(_held, "slot", None)
    if held is not None and held.conn is conn:
        _held.slot = None
        held.give_back(broken=True)


def _node_pool(client: Any, host: str, port: int) -> Any | None:
    """The pool of the cluster node at ``host:port``, or ``None`` if the client knows none."""
    node = client.get_node(host=host, port=port)
    return None if node is None else client.get_redis_connection(node).connection_pool


def _ask(conn: Any, url: str) -> None:
    """Send ``ASKING`` on ``conn``: its next command is for a slot being imported there."""
    try:
        conn.send_command("ASKING")
        conn.read_response()
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise _unavailable(url, exc, False) from exc  # the command itself was not sent


def command(
    client: redis.Redis,
    url: str,
    *args: Any,
    changes: bool,
    key: str | None = None,
    packed: bytes | None = None,
    reader: Callable[[Any], Any] | None = None,
) -> Any:
    """Send ``args`` (or ``packed``, the same command already in the wire protocol) on a
    pooled connection and return the reply (see the module docstring), read by ``reader``
    if given (called with the connection; it raises what ``read_response`` would raise).

    Raises:
        BackendUnavailable: the server could not be reached, or was lost mid-call (then
            ``committed`` is ``None`` for a change), or a slot migration or a change of
            master outlasted ``REDIRECT_WAIT`` (nothing was changed).
        redis.ResponseError: the server answered with an error (nothing was changed).
    """
    deadline = 0.0  # for resending a refused command: set at the first refusal
    asking: Any = None  # the pool of the node an ASK redirection names, for one attempt
    read_again = not changes  # a read lost mid-call is sent once more
    while True:
        try:
            conn: Any = _take(_pool(client, key) if asking is None else asking)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise _unavailable(url, exc, False) from exc
        try:
            if asking is not None:
                _ask(conn, url)
                asking = None
            try:
                if packed is None:
                    conn.send_command(*args)
                else:
                    conn.send_packed_command((packed,))
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                # sendall() failed: the server did not get the whole command, so it ran nothing.
                raise _unavailable(url, exc, False) from exc
            try:
                return conn.read_response() if reader is None else reader(conn)
            except (MovedError, AskError, TryAgainError, Demoted) as exc:
                # Refused unrun: a cluster node's redirection (its reply was read whole), or a
                # master turned replica (the next connection asks the Sentinels again).
                if isinstance(exc, Demoted):
                    _drop(conn)
                deadline = deadline or time.monotonic() + REDIRECT_WAIT
                asking = _refused(client, exc, deadline, url)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                _drop(conn)
                if not read_again:
                    raise _unavailable(url, exc, None if changes else False) from exc
                read_again = False
        except redis.ResponseError:
            raise  # the server's whole reply was read: the connection is ready for the next
        except BaseException:
            _drop(conn)
            raise


def _refused(client: Any, exc: Exception, deadline: float, url: str) -> Any:
    """After a refusal that ran nothing (a cluster node's ``MOVED``, ``ASK`` or ``TRYAGAIN``, or
    :class:`Demoted`): the pool of the node to send an ``ASK``'s command to, else ``None``
    (send it again where the slot table or the Sentinels say, after a pause). Raises ``exc``
    for a redirection if ``client`` is not a cluster's (a plain URL of one node serves that
    node's slots only), and ``BackendUnavailable`` past ``deadline``."""
    if isinstance(exc, (MovedError, AskError)) and not isinstance(client, RedisCluster):
        raise exc
    left = deadline - time.monotonic()
    if left <= 0:
        what = "the master changed" if isinstance(exc, Demoted) else "the segment's hash slot moved"
        raise BackendUnavailable(
            f"Redis at {url}: the server refused the command unrun while {what}, for "
            f"{REDIRECT_WAIT:g} s (nothing was changed): {exc}",
            url=url,
            committed=False,
        ) from exc
    if isinstance(exc, AskError):
        # Mid-migration: this command (only) goes to the importing node, after ASKING.
        pool = _node_pool(client, exc.host, int(exc.port))
        if pool is not None:
            return pool
    if isinstance(exc, (MovedError, AskError)):
        # The slot lives elsewhere now (a resharding ended), or an ASK named a node we do not
        # know yet: learn the cluster's layout again.
        client.nodes_manager.initialize()
    # Waiting out a migration's end, or a Sentinel's switch: a few ms at first, then 50 ms.
    time.sleep(min(max(REDIRECT_WAIT - left, _FIRST_PAUSE), _MAX_PAUSE, left))
    return None


def run(
    client: redis.Redis,
    url: str,
    script: Script,
    keys: list[str],
    args: list[Any],
    *,
    changes: bool,
) -> Any:
    """Run ``script`` (``EVALSHA``, then ``EVAL`` on ``NOSCRIPT``) and return its reply."""
    try:
        packed = script.packed(keys, args)
        if packed is not None:
            return command(client, url, changes=changes, key=keys[0], packed=packed)
        return command(
            client,
            url,
            "EVALSHA",
            script.sha,
            len(keys),
            *keys,
            *args,
            changes=changes,
            key=keys[0],
        )
    except NoScriptError:
        # The server ran nothing: it did not know the script.
        return command(
            client,
            url,
            "EVAL",
            script.source,
            len(keys),
            *keys,
            *args,
            changes=changes,
            key=keys[0],
        )
