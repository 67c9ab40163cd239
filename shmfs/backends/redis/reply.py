"""A batch read as one ``HMGET``, its reply read off the socket and scanned in C.

redis-py parses an array reply in Python, about 1.5 us per element; the ``READ_MANY`` script
avoids that by packing the values into one string, but costs the server six times an
``HMGET``'s work (splitting the indexes, bringing each value into Lua, joining them). Here the
``HMGET`` goes as it is, and its reply is read from the connection's socket with
``recv_into`` and scanned by the C module (``shmfs/_hot_c/resp.c``) until it is whole, then
packed as ``READ_MANY`` packs it (:mod:`shmfs.packed`), for the same decoding.

A plain ``HMGET`` answers what ``READ_MANY`` answers: that script reads the values hash and
nothing else (no lock, no version), and a missing index sends the client to check the segment
is whole and not destroyed either way (``listing.check_whole``).

The raw read is taken only when nothing is left in redis-py's own reader (between commands it
is empty: every reply is read whole) and the connection uses redis-py's Python parser; else the
reply is read by ``read_response`` and packed here. The socket's timeout applies; a timeout, a
connection closed mid-reply or a reply that is not an array of values raises redis-py's
``TimeoutError`` or ``ConnectionError``, so :func:`~shmfs.backends.redis.call.command` drops
the connection and sends the read once more, as for any read. An error reply (``MOVED``,
``ASK``, ``TRYAGAIN``, ...) becomes the exception redis-py's parser makes of it, for the same
handling.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any, Final

import redis

from shmfs import hotpath
from shmfs.packed import ABSENT

__all__ = ["RAW", "hmget", "read_many"]

#: Whether the raw read is used at all (tests turn it off to run the same cases through
#: redis-py's reader).
RAW = True
# The first read's room: a batch of 100 small values fits, and a buffer this size costs little
# to make. A longer reply doubles it as it comes.
_FIRST_ROOM: Final = 16384
_START: Final = (0, -1)


def _known_parsers() -> tuple[type, ...]:
    """redis-py's own pure-Python parsers, whose buffer the raw read checks is empty; none (so
    redis-py reads every reply) if a release names them otherwise."""
    try:
        from redis._parsers import _RESP2Parser, _RESP3Parser  # noqa: PLC0415  # private names
    except ImportError:
        return ()
    return (_RESP2Parser, _RESP3Parser)


_PARSERS: Final = _known_parsers()


def _where(conn: Any) -> str:
    """How redis-py names ``conn``'s server in its errors (a private method: host:port else)."""
    host_error = getattr(conn, "_host_error", None)
    if host_error is not None:
        return str(host_error())
    return f"{getattr(conn, 'host', '?')}:{getattr(conn, 'port', '?')}"


def hmget(key: str, indexes: list[int]) -> bytes:
    """``HMGET key indexes...`` in the wire protocol (packed in C when it can be: in Python,
    100 indexes cost as much as the C module's whole scan of their reply)."""
    name = key.encode()
    pack = hotpath.resp_hmget()
    packed = pack(name, indexes) if pack is not None else None
    if packed is not None:
        return packed
    words = [b"$%d\r\n%b\r\n" % (len(word), word) for word in map(b"%d".__mod__, indexes)]
    head = b"*%d\r\n$5\r\nHMGET\r\n$%d\r\n%b\r\n" % (len(indexes) + 2, len(name), name)
    return head + b"".join(words)


def read_many(conn: Any, count: int) -> tuple[bytes, int]:
    """The reply on ``conn`` to an :func:`hmget` of ``count`` indexes: its values packed as
    ``READ_MANY`` packs them, and how many indexes hold none.

    Raises:
        redis.ResponseError: the server's error reply (its redis-py subclass).
        redis.ConnectionError, redis.TimeoutError: the reply was not read whole.
    """
    scan = hotpath.resp_many()
    parser: Any = getattr(conn, "_parser", None)
    unread = getattr(getattr(parser, "_buffer", None), "unread_bytes", None)
    sock = getattr(conn, "_sock", None)
    if (
        not RAW
        or scan is None
        or type(parser) not in _PARSERS
        or unread is None
        or unread()
        or sock is None
    ):
        return _parsed(conn)
    try:
        reply = _raw(sock, scan, count)
    except TimeoutError as exc:
        raise redis.TimeoutError(f"Timeout reading from {_where(conn)}") from exc
    except OSError as exc:
        raise redis.ConnectionError(f"Error while reading from {_where(conn)}: {exc}") from exc
    except ValueError as exc:
        raise redis.ConnectionError(f"{_where(conn)}: {exc}") from exc
    if conn.health_check_interval:
        conn.next_health_check = time.monotonic() + conn.health_check_interval
    if isinstance(reply, str):
        # An HMGET is served by a replica too: no READONLY (sentinel.py's Demoted) comes here.
        raise parser.parse_error(reply)
    return reply


def _raw(sock: socket.socket, scan: Any, count: int) -> tuple[bytes, int] | str:
    """The whole reply read from ``sock``: scanned as it arrives, until it is whole."""
    room = bytearray(_FIRST_ROOM)
    view = memoryview(room)
    used, state = 0, _START
    try:
        while True:
            if used == len(room):
                view.release()
                room += bytes(len(room))
                view = memoryview(room)
            got = sock.recv_into(view[used:])
            if not got:
                raise ConnectionError("the server closed the connection mid-reply")
            used += got
            found = scan(room, used, count, state)
            if type(found) is tuple and type(found[0]) is int:
                state = found
                continue
            return found  # type: ignore[no-any-return]  # (packed, absent), or an error's text
    finally:
        view.release()


def _parsed(conn: Any) -> tuple[bytes, int]:
    """The reply read by redis-py's parser, packed here."""
    values = conn.read_response()
    lengths = [ABSENT if value is None else len(value) for value in values]
    absent = lengths.count(ABSENT)
    head = struct.pack(f"<{len(values)}I", *lengths)
    return head + b"".join(value for value in values if value is not None), absent
