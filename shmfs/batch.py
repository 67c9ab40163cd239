"""The batch calls of a segment: ``get_many`` and ``put_many``.

``Segment.get_many`` and ``Segment.put_many`` are thin calls into this module, which does the
work the same way for every backend, through the capabilities the backend declares
(:class:`shmfs.backends.Capabilities`):

* every index is checked, and every value encoded, before anything is read or written, so bad
  input raises its error and changes nothing;
* a backend that reads in one step without the lock (``read_many``: redis's ``HMGET``) does so;
  the others are read one variable after another under one hold of the segment lock, so that
  no write (a ``put_many`` included) lands in the middle;
* a batch is written by the backend's ``write_many`` under one hold of the lock (tmpfs
  publishes it with one store; the default puts back the old frames if one write fails), or,
  where single changes are atomic steps of the backend's (redis), by one ``commit_many``
  script call that takes no lock;
* a batch that does not fit raises one ``SegmentFull`` whose ``needed`` is the whole batch's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, cast

from shmfs import damage, frame
from shmfs.access import Holding
from shmfs.backends import SLOW, Atomic, Backend, Hot, capabilities
from shmfs.errors import CorruptSegment, InvalidArgument, SegmentFull
from shmfs.hotpath import Frames
from shmfs.packed import unpack_many
from shmfs.validate import check_index

__all__ = ["check_indexes", "check_items", "get_many", "put_many"]

_MIN: Final = -(1 << 63)
_MAX: Final = (1 << 63) - 1

Decode = Callable[[Backend, int, "bytes | memoryview | frame.Split"], Any]
# (value, index): a signature covers the index it is stored at
Encode = Callable[[Any, int], "bytes | frame.Pieces"]


def check_indexes(indexes: Iterable[int]) -> list[int]:
    """The indices asked for, each checked, in the order given (a repeat is read again, and
    comes once in the result).

    Raises:
        InvalidArgument: ``indexes`` is not an iterable of indices (a str or bytes included).
        InvalidKeyType: an index is not an int.
        InvalidKey: an index is out of range.
    """
    if isinstance(indexes, str | bytes | bytearray | Mapping) or not isinstance(indexes, Iterable):
        raise InvalidArgument(f"indexes must be an iterable of ints, not {type(indexes).__name__}")
    given = list(indexes)
    # The common case checked at C speed: plain ints in range (a bool is not one).
    if given and set(map(type, given)) == {int} and min(given) >= _MIN and max(given) <= _MAX:
        return given
    return [check_index(index) for index in given]


def check_items(mapping: Mapping[int, Any] | Iterable[tuple[int, Any]]) -> dict[int, Any]:
    """The pairs to store, each index checked (a later pair for an index wins, as in a dict).

    Raises:
        InvalidArgument: ``mapping`` is neither a mapping nor an iterable of pairs.
        InvalidKeyType: an index is not an int.
        InvalidKey: an index is out of range.
    """
    if isinstance(mapping, Mapping):
        pairs: Iterable[Any] = mapping.items()
    elif isinstance(mapping, Iterable) and not isinstance(mapping, str | bytes | bytearray):
        pairs = mapping
    else:
        raise InvalidArgument(f"put_many takes a mapping of index: value, not {mapping!r:.60}")
    checked: dict[int, Any] = {}
    for pair in pairs:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise InvalidArgument(f"put_many takes (index, value) pairs, not {pair!r:.60}")
        checked[check_index(pair[0])] = pair[1]
    return checked


def get_many(
    key: int,
    backend: Backend,
    indexes: list[int],
    *,
    hot: Hot | None,
    decode: Decode,
    holding: Callable[[], Holding],
    frames: Frames | None = None,
) -> dict[int, Any]:
    """The values of those ``indexes`` that hold one, read in one consistent step.

    Each frame is decoded right after it is read, since what a backend says of the trust of a
    read speaks for that read alone (``Backend.trusted``). A backend with ``read_packed``
    (redis: one reply packing every frame) has the whole reply decoded by ``frames`` (the C
    module's, given for a handle that reads unsigned frames), where one trust verdict stands
    for the batch: such a backend's ``trusted`` does not depend on the index.

    Raises:
        CorruptSegment: a value fails its checks (naming the segment ``key`` and its index).
        The errors of ``decode`` and of the backend's reads.
    """
    if not indexes:
        return {}
    offers = capabilities(backend)
    found: dict[int, Any] = {}
    index: int | None = None  # the index being read when an error is raised
    try:
        if offers.read_packed is not None and frames is not None:
            # One reply decoded in one C call; anything unusual in it is read below, in Python.
            packed = offers.read_packed(indexes)
            decoded = frames.decode(indexes, packed, backend.trusted(indexes[0]))
            if decoded is not SLOW:
                return cast(dict[int, Any], decoded)
            read: list[bytes | None] = unpack_many(packed, len(indexes), key)
        elif offers.read_many is not None:
            read = offers.read_many(indexes)
        else:
            with holding() as held:
                for index in indexes:
                    if hot is not None:
                        # Lock-free and whole under our lock too: no writer can be mid-change.
                        value = hot.get(index)
                        if value is not SLOW:
                            found[index] = value
                            continue
                    data = held.read(index)
                    if data is not None:
                        found[index] = decode(held, index, data)
            return found
        for index, frame_read in zip(indexes, read, strict=True):
            if frame_read is not None:
                found[index] = decode(backend, index, frame_read)
    except CorruptSegment as exc:
        # Said as a get of that index says it: the segment, the index, where its bytes are.
        raise damage.located(exc, backend, key, index) from exc
    return found


def put_many(
    key: int,
    backend: Backend,
    items: dict[int, Any],
    *,
    encode: Encode,
    atomic: Atomic | None,
    holding: Callable[[], Holding],
    timeout: float | None,
) -> None:
    """Store every value of ``items`` or none: all encoded first, then written in one step.
    The segment passes in the parts of itself the call uses (``encode``, its ``atomic``, its
    lock-then-act ``holding`` and ``lock_timeout``).

    Raises:
        SegmentFull: the batch does not fit (``needed``: the whole batch's bytes).
        The errors of ``encode`` and of the backend's writes.
    """
    encoded = [(index, encode(value, index)) for index, value in items.items()]
    if not encoded:
        return
    needed = sum(len(data) for _, data in encoded)
    try:
        if atomic is not None:
            # An atomic backend sets no writes_pieces, so this joins nothing in practice.
            frames = [
                (index, data if isinstance(data, bytes) else b"".join(data.parts))
                for index, data in encoded
            ]
            atomic.commit_many(frames, timeout)
            return
        with holding() as held:
            write_many = capabilities(held).write_many
            assert write_many is not None  # capabilities() always gives one
            write_many(encoded)
    except SegmentFull as full:
        if len(encoded) == 1:
            raise
        raise batch_full(key, full, needed, len(encoded)) from full


def batch_full(key: int, full: SegmentFull, needed: int, count: int) -> SegmentFull:
    """``full``, raised by one value of a batch, said of the whole batch of ``count`` values."""
    size = getattr(full, "size", None)
    used = getattr(full, "used", None)
    where = f" ({used} of {size} bytes used)" if size is not None else ""
    return SegmentFull(
        f"segment {key}: a batch of {count} values, {needed} bytes, does not fit{where}; "
        "nothing was stored: attach with a bigger size= or remove variables",
        key=key,
        index=getattr(full, "index", None),
        needed=needed,
        size=size,
        used=used,
    )
