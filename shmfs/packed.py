"""A batch of frames packed in one string: how the redis backend's ``READ_MANY`` script replies.

redis-py parses an array reply in Python, element by element: for an ``HMGET`` of 100 values
that costs five times the round trip of one ``HGET``. ``READ_MANY`` packs the values into one
bulk string instead (per index, a 4-byte little-endian length, ``0xFFFFFFFF`` for none, then
the value), which the client reads in one piece; :func:`unpack_many` splits it, and the C
module's ``Frames.decode`` (``shmfs/_hot_c/batch.c``) reads the same layout without splitting.
"""

from __future__ import annotations

import struct
from typing import Final

from shmfs.errors import CorruptSegment

__all__ = ["ABSENT", "unpack_many"]

#: The length that stands for "no value at this index".
ABSENT: Final = 0xFFFF_FFFF
_LENGTH: Final = struct.Struct("<I")


def unpack_many(packed: bytes, count: int, key: int) -> list[bytes | None]:
    """The ``count`` values packed in ``packed`` (``None``: no value), in order.

    Raises:
        CorruptSegment: ``packed`` is not ``count`` values packed as ``READ_MANY`` packs them.
    """
    view = memoryview(packed)
    found: list[bytes | None] = []
    at = 0
    try:
        for _ in range(count):
            (length,) = _LENGTH.unpack_from(view, at)
            at += 4
            if length == ABSENT:
                found.append(None)
                continue
            if length > len(view) - at:
                break
            found.append(bytes(view[at : at + length]))
            at += length
    except struct.error:
        pass
    if len(found) != count or at != len(view):
        raise CorruptSegment(
            f"segment {key}: the server's reply to a batch read is malformed "
            f"({len(packed)} bytes for {count} values)",
            key=key,
        )
    return found
