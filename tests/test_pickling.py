"""shmfs.pickling: out-of-band payloads and lone bytes pickles, read without the unpickler."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest

import shmfs
from shmfs import pickling


def _payload(value: object) -> bytes:
    stream, buffers = pickling.dumps_out_of_band(pickle.Pickler, value)
    return pickling.pack_buffers(stream, buffers)


def test_out_of_band_round_trip_and_alignment() -> None:
    value = {
        "a": np.arange(7, dtype=np.int8),  # 7 bytes: the next buffer needs padding
        "b": np.ones((3, 5)),
        "c": pickle.PickleBuffer(bytearray(b"xyz")),
        "d": bytearray(b"in band"),  # a bare bytearray pickles in band
    }
    payload = memoryview(_payload(value))
    _, buffers = pickling.unpack_buffers(payload)
    assert [len(buffer) for buffer in buffers] == [7, 120, 3]
    start = _address(payload)
    assert all((_address(buffer) - start) % 8 == 0 for buffer in buffers)
    got = pickling.loads_out_of_band(payload)
    assert np.array_equal(got["a"], value["a"]) and np.array_equal(got["b"], value["b"])
    assert bytes(got["c"]) == b"xyz" and got["d"] == bytearray(b"in band")
    assert got["b"].flags.writeable  # a copy of its own


def _address(view: memoryview) -> int:
    return int(np.frombuffer(view, dtype=np.uint8).ctypes.data)


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p[:8],  # shorter than the table's head
        lambda p: struct.pack("<QQ", 0, 1 << 60) + p[16:],  # more buffers than bytes
        lambda p: struct.pack("<Q", 1 << 40) + p[8:],  # a stream past the end
        lambda p: p[:16] + struct.pack("<Q", 1 << 40) + p[24:],  # a buffer past the end
        lambda p: p + b"\x00" * 8,  # bytes the table does not account for
        lambda p: p[:-1],  # the last buffer cut short
    ],
    ids=["short", "count", "stream", "buffer", "trailing", "truncated"],
)
def test_damaged_tables_are_corruption(damage: object) -> None:
    payload = _payload([np.arange(4), np.arange(3)])
    with pytest.raises(shmfs.CorruptSegment):
        pickling.unpack_buffers(memoryview(damage(payload)))  # type: ignore[operator]


@pytest.mark.parametrize(
    "value", [b"", b"x", b"y" * 300, b"z" * 70_000], ids=["empty", "short", "binbytes", "framed"]
)
def test_lone_bytes_in_every_form_pickle_writes(value: bytes) -> None:
    for pickled in (pickle.dumps(value, 5), b"".join(pickling.bytes_pickle(value))):
        found = pickling.lone_bytes(memoryview(pickled))
        assert found is not None and bytes(found) == value


@pytest.mark.parametrize(
    "pickled",
    [
        pickle.dumps(bytearray(b"abc"), 5),
        pickle.dumps([b"abc"], 5),
        pickle.dumps("abc", 5),
        pickle.dumps(b"abc", 5)[:-1],  # no STOP
        pickle.dumps(b"abc", 4),
        b"",
    ],
    ids=["bytearray", "list", "str", "no-stop", "protocol-4", "empty"],
)
def test_anything_else_is_not_lone_bytes(pickled: bytes) -> None:
    assert pickling.lone_bytes(memoryview(pickled)) is None
