"""Reaching a Redis server: the URL (checked here; its default and redacted form are in
url.py), the client, and whether only trusted users can reach the server (which decides if
pickles read from it may be decoded).

**Trust.** Anyone who can reach the server can write a value, and Redis does not say who did.
Pickled values are decoded only when the caller says ``trust_server=True``, or when no
untrusted user can reach the server: the URL is a unix socket owned by a trusted uid with no
group/other write bit, in a directory others cannot write to (or a sticky one), and the server
reports no TCP or TLS port (``CONFIG GET``: Debian's default server listens on 127.0.0.1:6379 as
well, where any local user can write). Elsewhere use ``secret=`` or the ``json``/``raw``/``php``
codecs, which are safe across any server.
"""

from __future__ import annotations

import os
import stat
import urllib.parse
from collections.abc import Callable
from typing import Any, Final

import redis
from redis.cluster import RedisCluster
from redis.connection import URL_QUERY_ARGUMENT_PARSERS

from shmfs.backends.redis.sentinel import sentinel_client
from shmfs.backends.redis.url import default_url, redacted
from shmfs.errors import InvalidArgument

__all__ = [
    "CLUSTER",
    "CONNECT_TIMEOUT",
    "SENTINEL",
    "SOCKET_TIMEOUT",
    "check_url",
    "client",
    "close",
    "default_url",
    "no_listener_on",
    "no_network_listener",
    "redacted",
    "socket_private",
]


#: The scheme of a URL that names Sentinels and a service, not a server:
#: ``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]``. The password is
#: the master's; the Sentinels are asked without one.
SENTINEL: Final = "redis+sentinel"
#: The scheme of a URL that names one node of a Redis Cluster: ``redis+cluster://host:port``;
#: the client learns the others from it, and sends each segment's calls to the node holding
#: its hash slot (every key of a segment has the tag ``{KEY}``, so they share one).
CLUSTER: Final = "redis+cluster"

#: Seconds to wait for a connection, and for a reply, unless the URL says otherwise
#: (``?socket_connect_timeout=``, ``?socket_timeout=``): a server that stalls fails a call
#: within seconds instead of blocking it.
CONNECT_TIMEOUT: Final = 3.0
SOCKET_TIMEOUT: Final = 5.0

# The URL options a user may set, by scheme: redis-py's own parsed options, and what its
# connection classes take (anything else would only fail at the first connection, untyped).
_COMMON: Final = frozenset(URL_QUERY_ARGUMENT_PARSERS) | {
    "password",
    "username",
    "client_name",
    "encoding",
    "encoding_errors",
}
_OPTIONS: Final = {
    "unix": _COMMON,
    "redis": _COMMON,
    SENTINEL: _COMMON,
    CLUSTER: _COMMON - {"db"},
    "rediss": _COMMON
    | {
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_cert_reqs",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_ciphers",
    },
}


def check_url(url: str) -> None:
    """Refuse a URL redis-py would misread or fail on later: ``InvalidArgument``."""
    shown = redacted(url)
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != SENTINEL:  # its several host:port pairs are parsed where used
            parts.port  # noqa: B018  # parses the port, raising ValueError for a bad one
    except ValueError as exc:
        raise InvalidArgument(f"not a Redis URL: {shown} ({exc})") from exc
    allowed = _OPTIONS.get(parts.scheme)
    if allowed is None:
        raise InvalidArgument(
            f"not a Redis URL: {shown} (the scheme must be redis://, rediss://, unix://, "
            f"{SENTINEL}:// or {CLUSTER}://)"
        )
    unknown = sorted({name for name, _ in urllib.parse.parse_qsl(parts.query)} - allowed)
    if unknown:
        raise InvalidArgument(
            f"Redis URL {shown}: unknown option {', '.join(unknown)} (known: "
            f"{', '.join(sorted(allowed))})"
        )


def client(url: str, on_connect: Callable[[Any], None] | None = None) -> redis.Redis:
    """A client for ``redis://``, ``rediss://``, ``unix://`` or ``redis+sentinel://`` URLs;
    ``on_connect(connection)`` runs on every new connection, after redis-py's own handshake
    (authentication, database)."""
    check_url(url)
    hook = None
    if on_connect is not None:

        def hook(connection: Any) -> None:
            connection.on_connect()
            on_connect(connection)

    timeouts = {"socket_connect_timeout": CONNECT_TIMEOUT, "socket_timeout": SOCKET_TIMEOUT}
    try:
        if url.startswith(f"{SENTINEL}://"):
            return sentinel_client(url, hook, timeouts)
        if url.startswith(f"{CLUSTER}://"):
            node_url = "redis://" + url.removeprefix(f"{CLUSTER}://")
            # Not a redis.Redis, though it answers the same calls: typed as what it stands in for.
            cluster: Any = RedisCluster.from_url(node_url, redis_connect_func=hook, **timeouts)
            return cluster  # type: ignore[no-any-return]  # see above
        return redis.Redis.from_url(url, redis_connect_func=hook, **timeouts)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"not a Redis URL: {redacted(url)} ({exc})") from exc


def close(client: redis.Redis) -> None:
    """Close ``client``'s connections, and those to the Sentinels that found its server."""
    pool = getattr(client, "connection_pool", None)  # a cluster client has one per node
    manager = getattr(pool, "sentinel_manager", None)
    client.close()
    for sentinel in getattr(manager, "sentinels", ()):
        sentinel.close()


def socket_private(url: str, trust_uids: frozenset[int]) -> bool:
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


def no_listener_on(connection: Any) -> bool:
    """Whether the server behind ``connection`` (a redis-py connection) says it listens on no
    TCP or TLS port; unknown (``CONFIG`` disabled or renamed) counts as no."""
    for name in ("port", "tls-port"):
        connection.send_command("CONFIG", "GET", name)
        try:
            reply = connection.read_response()
        except redis.ResponseError:
            return False
        # A pair as RESP2 sends it, or a map as redis-py may parse it.
        values = list(reply.values()) if isinstance(reply, dict) else list(reply)[1:]
        if values not in ([b"0"], ["0"]):
            return False
    return True


def no_network_listener(client: redis.Redis) -> bool:
    """Whether the server says it listens on no TCP or TLS port (unknown counts as no)."""
    try:
        ports = [client.config_get(name).get(name, "0") for name in ("port", "tls-port")]
    except redis.ResponseError:
        return False  # CONFIG disabled or renamed: we cannot tell, so we do not trust
    return all(str(port) == "0" for port in ports)
