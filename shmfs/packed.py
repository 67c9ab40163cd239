"""A batch of frames packed in one string: how the redis backend's ``READ_MANY`` script replies.

redis-py parses an array reply in Python, element by element: for an ``HMGET`` of 100 values
that costs five times the round trip of one ``HGET``. ``READ_MANY`` packs the values into one
bulk string instead, which the client reads in one piece: each index's length (4 bytes,
little-endian; ``0xFFFFFFFF`` for no value), then the values, in order. :func:`unpack_many`
splits it, and the C module's ``Frames.decode`` (``shmfs/_hot_c/batch.c``) reads the same
layout without splitting. With the C module, the batch is an ``HMGET`` instead, whose raw reply
the C module packs in this layout (``shmfs/backends/redis/reply.py``).
"""

from __future__ import annotations

import struct
from typing import Final

from shmfs.errors import CorruptSegment

__all__ = ["ABSENT", "unpack_many"]

#: The length that stands for "no value at this index".
ABSENT: Final = 0xFFFF_FFFF


def unpack_many(packed: bytes, count: int, key: int) -> list[bytes | None]:
    """The ``count`` values packed in ``packed`` (``None``: no value), in order.

    Raises:
        CorruptSegment: ``packed`` is not ``count`` values packed as ``READ_MANY`` packs them.
    """
    at = 4 * count
    lengths = struct.unpack_from(f"<{count}I", packed) if len(packed) >= at else ()
    found: list[bytes | None] = []
    view = memoryview(packed)
    for length in lengths:
        if length == ABSENT:
            found.append(None)
            continue
        if length > len(view) - at:
            break
        found.append(bytes(view[at : at + length]))
        at += length
    if len(found) != count or at != len(view):
        raise CorruptSegment(
            f"segment {key}: the server's reply to a batch read is malformed "
            f"({len(packed)} bytes for {count} values)",
            key=key,
        )
    return found
