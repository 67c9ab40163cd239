"""Reaching a Redis server: the URL (default, redacted for messages), the client, and whether
only trusted users can reach the server (which decides if pickles read from it may be decoded).

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

import redis

from shmfs.errors import InvalidArgument

__all__ = ["client", "default_url", "no_network_listener", "redacted", "socket_private"]


def default_url() -> str:
    """The server used when ``root=`` names none: ``$SHMFS_REDIS_URL``, else ``$SHMFS_ROOT``
    if it is a URL, else a server on localhost."""
    root = os.environ.get("SHMFS_ROOT", "")
    fallback = root if "://" in root else "redis://localhost:6379/0"
    return os.environ.get("SHMFS_REDIS_URL", fallback)


def redacted(url: str) -> str:
    """``url`` with its password shown as ``***``, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def client(url: str) -> redis.Redis:
    """A client for ``redis://``, ``rediss://`` or ``unix://`` URLs."""
    try:
        return redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30)
    except ValueError as exc:
        raise InvalidArgument(f"not a Redis URL: {redacted(url)} ({exc})") from exc


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


def no_network_listener(client: redis.Redis) -> bool:
    """Whether the server says it listens on no TCP or TLS port (unknown counts as no)."""
    try:
        ports = [client.config_get(name).get(name, "0") for name in ("port", "tls-port")]
    except redis.RedisError:
        return False  # CONFIG disabled or renamed: we cannot tell, so we do not trust
    return all(str(port) == "0" for port in ports)
