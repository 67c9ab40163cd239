"""What shmfs knows of pickle's own format, used where unpickling or re-pickling would copy.

Two things: values whose protocol-5 buffers (numpy arrays' data, ``pickle.PickleBuffer``) are
stored apart from the pickle stream, so that a view can hand them out where they lie; and a
pickle of one ``bytes`` object, recognised by its opcodes, so that the bytes can be copied or
viewed without running the unpickler.

Out-of-band payload layout (little-endian words)::

    stream length, buffer count, each buffer's length   the table
    the pickle stream
    each buffer, at an 8-byte aligned offset            (numpy items want alignment)
"""

from __future__ import annotations

import io
import pickle
import struct
from typing import Any, Final

from shmfs.errors import CorruptSegment

__all__ = [
    "TUPLE_HEAD_AT",
    "bytes_at",
    "bytes_pickle",
    "dumps_out_of_band",
    "loads_out_of_band",
    "lone_bytes",
    "pack_buffers",
    "tuple_head",
    "unpack_buffers",
]

_PROTOCOL: Final = 5
_TABLE_HEAD: Final = struct.Struct("<QQ")  # stream length, buffer count; then the lengths
_BINBYTES: Final = b"\x80\x05B"  # PROTO 5, BINBYTES with a 4-byte length: what pickle writes
_BINBYTES8: Final = b"\x80\x05\x8e"  # ... BINBYTES8 with an 8-byte length, at 4 GiB and more
_LENGTH_BYTES: Final = {ord("C"): 1, ord("B"): 4, 0x8E: 8}  # SHORT_BINBYTES, BINBYTES, BINBYTES8


def dumps_out_of_band(
    pickler_class: type[pickle.Pickler], value: Any
) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle ``value`` with ``pickler_class``, its protocol-5 buffers kept apart, so that they
    are stored as they are and a view can hand them out without copying."""
    buffers: list[pickle.PickleBuffer] = []
    stream = io.BytesIO()
    pickler_class(stream, protocol=_PROTOCOL, buffer_callback=buffers.append).dump(value)
    return stream.getvalue(), buffers


def pack_buffers(stream: bytes, buffers: list[pickle.PickleBuffer]) -> bytes:
    """The out-of-band payload of ``stream`` and its ``buffers`` (see the module's layout)."""
    raws = [buffer.raw() for buffer in buffers]
    table = [len(stream), len(raws), *(raw.nbytes for raw in raws)]
    parts: list[bytes | memoryview] = [struct.pack(f"<{len(table)}Q", *table), stream]
    offset = 8 * len(table) + len(stream)
    for raw in raws:
        pad = -offset % 8
        parts += [bytes(pad), raw]
        offset += pad + raw.nbytes
    return b"".join(parts)


def unpack_buffers(payload: memoryview) -> tuple[memoryview, list[memoryview]]:
    """Split an out-of-band payload into its pickle stream and its buffers (views, no copies).

    Raises:
        CorruptSegment: the table does not describe the payload.
    """
    size = len(payload)
    if size < 16:
        raise CorruptSegment("out-of-band value is shorter than its table")
    stream_length, count = _TABLE_HEAD.unpack_from(payload)
    if count > (size - 16) // 8:
        raise CorruptSegment("out-of-band value's table is longer than the value")
    lengths = struct.unpack_from(f"<{count}Q", payload, 16)
    offset = 16 + 8 * count
    if stream_length > size - offset:
        raise CorruptSegment("out-of-band value's pickle runs past its end")
    stream = payload[offset : offset + stream_length]
    offset += stream_length
    buffers = []
    for length in lengths:
        offset += -offset % 8
        if length > size - offset:
            raise CorruptSegment("out-of-band value's buffer runs past its end")
        buffers.append(payload[offset : offset + length])
        offset += length
    if offset != size:
        raise CorruptSegment("out-of-band value has bytes its table does not account for")
    return stream, buffers


def loads_out_of_band(payload: bytes | memoryview) -> Any:
    """Unpickle an out-of-band payload into a value of its own (the buffers are copied)."""
    # get() returns a value of its own: the buffers are copied (bytearray: writable, as an
    # in-band unpickle would make them); only Segment.view hands out the stored bytes.
    stream, buffers = unpack_buffers(memoryview(payload))
    return pickle.loads(stream, buffers=[bytearray(buffer) for buffer in buffers])


def bytes_pickle(value: bytes) -> list[bytes]:
    """A protocol-5 pickle of a large ``bytes``, in pieces, so that the frame is built with one
    allocation and one copy: ``pickle.dumps`` grows its buffer by doubling, and on a megabyte
    those reallocations (fresh, page-faulting memory) cost 20 times the copy."""
    size = len(value)
    # BINBYTES (4-byte length) as pickle itself writes below 4 GiB, BINBYTES8 above; then STOP.
    head = (
        _BINBYTES + size.to_bytes(4, "little")
        if size < 1 << 32
        else (_BINBYTES8 + size.to_bytes(8, "little"))
    )
    return [head, value, b"."]


def lone_bytes(pickled: memoryview) -> memoryview | None:
    """The bytes inside a protocol-5 pickle of one ``bytes`` object, in any of the forms pickle
    writes (optional FRAME, the three BINBYTES sizes, optional MEMOIZE); else ``None``."""
    if len(pickled) < 4 or pickled[0] != 0x80 or pickled[1] != 5:
        return None
    at = 11 if pickled[2] == 0x95 else 2  # FRAME and its 8-byte length
    width = _LENGTH_BYTES.get(pickled[at]) if at < len(pickled) else None
    if width is None or at + 1 + width > len(pickled):
        return None
    start = at + 1 + width
    end = start + int.from_bytes(pickled[at + 1 : start], "little")
    if bytes(pickled[end:]) not in (b".", b"\x94."):  # STOP, after MEMOIZE or not
        return None
    return pickled[start:end]


def bytes_at(opcodes: bytes | memoryview, payload_length: int) -> int | None:
    """Where the bytes start in a ``payload_length``-byte pickle beginning with ``opcodes`` (its
    first 11 bytes), if it is exactly one ``bytes`` (PROTO 5, BINBYTES or BINBYTES8, STOP)."""
    kind = bytes(opcodes[:3])
    if kind == _BINBYTES:
        start = 7
    elif kind == _BINBYTES8:
        start = 11
    else:
        return None
    size = int.from_bytes(opcodes[3:start], "little")
    return start if len(opcodes) >= start and start + size + 1 == payload_length else None


#: Where :func:`tuple_head`'s bytes lie in a pickle: after PROTO and FRAME with its length.
TUPLE_HEAD_AT: Final = 11


def tuple_head(first: str) -> bytes:
    """What a protocol-5 pickle of a tuple of four or more items whose first item is the str
    ``first`` has at :data:`TUPLE_HEAD_AT`, when the pickler framed the str with it (it does
    below 64 KiB; check): MARK, the str (SHORT_BINUNICODE or BINUNICODE), MEMOIZE.

    Two pickles with these bytes there are tuples beginning with the same str; ``Cache.set``
    replaces only the entry of the same key that way, without decoding it.
    """
    alone = pickle.dumps(first, _PROTOCOL)  # PROTO, FRAME, the str, MEMOIZE, STOP
    return b"(" + alone[TUPLE_HEAD_AT:-1]
