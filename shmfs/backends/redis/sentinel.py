"""A master found by its Sentinels, and found again when it moves.

redis-py asks the Sentinels for the master only when it opens a connection. After a failover
the old master may stay a master for seconds (a Sentinel turns it into a replica only once it
has seen it report itself a master for a while, 8-10 s after a ``SENTINEL FAILOVER``), and a
connection kept open to it, as each thread's own connection is (:mod:`shmfs.backends.redis.call`)
and a subscription is, goes on reading and writing there: writes acknowledged by a server whose
data the new master will never have, and reads of a state no longer current. So the pool here
asks the Sentinels again at most every ``MASTER_RECHECK`` seconds when a connection is taken
from it or reused (:meth:`MasterPool.current`), and the callers drop a connection to a server
the Sentinels no longer name. A server that answers ``READONLY`` is a demoted master that ran
nothing: :class:`Demoted` says so, where redis-py's own error cannot tell it from a connection
lost mid-call.
"""

from __future__ import annotations

import contextlib
import math
import time
import urllib.parse
from typing import Any, Final

import redis
from redis.connection import URL_QUERY_ARGUMENT_PARSERS, Connection, SSLConnection
from redis.exceptions import ReadOnlyError
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

__all__ = ["MASTER_RECHECK", "Demoted", "MasterPool", "sentinel_client"]

#: Seconds a connection to the master may be reused before the Sentinels are asked again
#: whether it is still the master: after a failover, at most this long (plus one call to the
#: Sentinels) is spent on the old master.
MASTER_RECHECK: Final = 1.0


class Demoted(redis.ConnectionError):
    """The server answered ``READONLY``: it is a replica now, and ran nothing of the command."""


class _MasterConnection(SentinelManagedConnection):
    """A connection to the master that says :class:`Demoted` for a ``READONLY`` reply."""

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            # Connection's own read: SentinelManagedConnection's turns READONLY into a plain
            # ConnectionError, which reads as "lost mid-call".
            return Connection.read_response(self, *args, **kwargs)
        except ReadOnlyError as exc:
            self.disconnect()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated; the next connect asks the Sentinels again
            raise Demoted(f"{self.host}:{self.port} is no longer the master: {exc}") from exc


class _MasterSSLConnection(_MasterConnection, SSLConnection):
    pass


class MasterPool(SentinelConnectionPool):
    """The master's connections, asking the Sentinels again at most every ``MASTER_RECHECK`` s."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        ssl = kwargs.pop("ssl", False)
        kwargs["connection_class"] = _MasterSSLConnection if ssl else _MasterConnection
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        self._asked = -math.inf

    def _ask(self) -> None:
        """Ask the Sentinels for the master if it is time: redis-py then disconnects the idle
        connections to the old one."""
        now = time.monotonic()
        if now - self._asked < MASTER_RECHECK:
            return
        self._asked = now
        # No Sentinel answering is no reason to fail a call: the master we know is the best
        # guess until one answers.
        with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
            self.get_master_address()  # type: ignore[no-untyped-call]  # likewise

    def current(self, connection: Any) -> bool:
        """Whether ``connection`` is to the master the Sentinels named when last asked."""
        self._ask()
        address = self.master_address
        return address is None or (connection.host, connection.port) == tuple(address)

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        """A connection, after asking the Sentinels if it is time (see ``current``)."""
        self._ask()
        return super().get_connection(*args, **kwargs)


def sentinel_client(url: str, hook: Any, timeouts: dict[str, float]) -> redis.Redis:
    """The master a Sentinel URL names, found (and found again after a failover) by asking
    its Sentinels."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    sentinels = []
    for address in netloc.split(","):
        host, _, port = address.rpartition(":")
        sentinels.append((host or "localhost", int(port or 26379)))
    path = [piece for piece in parts.path.split("/") if piece]
    if not path:
        raise ValueError("a Sentinel URL names the service: redis+sentinel://host:port/service")
    options: dict[str, Any] = dict(timeouts)
    if len(path) > 1:
        options["db"] = int(path[1])
    for name, value in urllib.parse.parse_qsl(parts.query):
        parser: Any = URL_QUERY_ARGUMENT_PARSERS.get(name)
        options[name] = parser(value) if parser is not None else value
    if parts.password is not None:
        options["password"] = urllib.parse.unquote(parts.password)
    if parts.username:
        options["username"] = urllib.parse.unquote(parts.username)
    manager = Sentinel(sentinels, sentinel_kwargs=dict(timeouts), **options)  # type: ignore[no-untyped-call]  # redis-py leaves Sentinel unannotated
    master: redis.Redis = manager.master_for(  # type: ignore[no-untyped-call]  # likewise
        path[0], connection_pool_class=MasterPool, redis_connect_func=hook, **options
    )
    return master
