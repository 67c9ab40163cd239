"""``get_many`` in one C call (``shmfs/_hot_c/batch.c``): tmpfs's and sysv's fast paths, and the
redis batch reply decoded by ``Frames``. Each test compares it with the Python path, on a second
handle of the same segment made without the C module, and checks that the C call did answer
(not SLOW) where it should: a wrong copy, offset or checksum there would otherwise only send
every batch the Python way, unnoticed."""

from __future__ import annotations

import datetime
import gc
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import shmfs
from shmfs import codecs, hotpath
from shmfs import frame as framing
from shmfs.backends import SLOW
from shmfs.backends.sysv import ipc
from shmfs.backends.tmpfs.slabs import split_location
from shmfs.errors import CorruptSegment, SerializationError
from shmfs.packed import ABSENT, unpack_many
from tests.tmpfs_files import large, location, pwrite, slot_of

pytestmark = pytest.mark.skipif(not hotpath.available(), reason="the C module is not built")

#: Unpickled values' side effects, counted (see Counted).
DECODED: list[str] = []

VALUES: dict[int, Any] = {
    0: "x" * 100,
    1: "",
    2: 7,
    3: -(2**70),
    4: 2.5,
    5: None,
    6: True,
    7: (1, "two", [3.0, None]),
    8: {"a": b"bytes", "b": {"nested": [1, 2]}},
    9: b"\x00" * 1000,
    10: "é" * 1900,  # a big slot (3,800 bytes of UTF-8)
    11: datetime.date(2020, 1, 2),  # not a plain value: pickle.loads reads it
    12: "ü" * 30,  # a short str that is not ASCII
    13: "y" * 256,  # the longest str copied as ASCII, and the first one past a short length
    14: "z" * 257,
    -1: "negative",
    2**63 - 1: "largest",
    -(2**63): "smallest",
}


def _count(name: str) -> str:
    DECODED.append(name)
    return name


def _explode(name: str) -> str:
    raise ValueError(f"{name} cannot be unpickled")


class Counted:
    """Unpickles as its name, noting that it was unpickled."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return _count, (self.name,)


#: The handle that DetachingOnLoad's unpickling detaches.
DETACHING: list[shmfs.Segment] = []


def _detach_then_fail(name: str) -> str:
    DETACHING.pop().detach()
    raise ValueError(f"{name} detached its handle")


class DetachingOnLoad:
    """Unpickling it detaches a handle (``DETACHING``), then raises."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return _detach_then_fail, ("detaching",)


class Exploding:
    """Unpickling it raises."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return _explode, ("exploding",)


@pytest.fixture(params=["tmpfs", "sysv", "redis"])
def pair(
    request: pytest.FixtureRequest, root: str, key: int
) -> Iterator[tuple[shmfs.Segment, shmfs.Segment]]:
    """A segment with the C path, and a second handle on it without."""
    backend = str(request.param)
    where = str(request.getfixturevalue("redis_url")) if backend == "redis" else root
    seg = shmfs.attach(key, 1 << 20, backend=backend, root=where)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(hotpath, "_hot", None)
            pure = shmfs.attach(key, backend=backend, root=where)
        assert pure._hot is None and pure._frames is None
        try:
            yield seg, pure
        finally:
            pure.detach()
    finally:
        seg.destroy()


def c_batch(seg: shmfs.Segment, indexes: list[int]) -> Any:
    """What the C call alone answers for ``indexes``: a dict, or SLOW."""
    if seg._hot is not None:
        return seg._hot.get_many(indexes)
    assert seg._frames is not None
    backend: Any = seg._backend
    return seg._frames.decode(indexes, backend.read_packed(indexes), True)


def test_the_c_batch_equals_the_python_batch(pair: tuple[shmfs.Segment, shmfs.Segment]) -> None:
    seg, pure = pair
    seg.put_many(VALUES)
    present = [2**63 - 1, 3, 0, 11, 3, -1, *VALUES]  # repeats, in no order
    found = c_batch(seg, present)
    assert found is not SLOW
    assert found == pure.get_many(present) == {index: seg.get(index) for index in present}
    assert list(found) == list(pure.get_many(present))  # the order asked, first sight
    assert seg.get_many(present) == found
    absent = [100, 0, -7, 2, 12345]
    expected = {0: VALUES[0], 2: VALUES[2]}
    assert seg.get_many(absent) == pure.get_many(absent) == expected
    assert seg.get_many([100, 101]) == {} == pure.get_many([100, 101])
    if seg.backend != "sysv":  # sysv's C call takes only what the chain index remembers
        assert c_batch(seg, absent) == expected
    assert seg.get_many(tuple(present)) == found  # a tuple too; other iterables go Python's way
    assert seg.get_many(iter(present)) == found


def test_every_frame_length_is_checksummed_as_zlib_does(
    pair: tuple[shmfs.Segment, shmfs.Segment],
) -> None:
    """Frames of every length from 0 to 400 payload bytes, in batches whose neighbours differ in
    length (the checksums are computed four at a time): each passes its check in C."""
    seg, pure = pair
    values = {n: b"\xa5" * n for n in range(401)}
    seg.put_many(values)
    for start in range(4):
        indexes = list(range(start, 401, 3)) + list(range(400, 0, -7))
        found = c_batch(seg, indexes)
        assert found is not SLOW, start
        assert found == {index: values[index] for index in indexes} == pure.get_many(indexes)


def test_a_mapped_large_variable_is_read_in_the_batch(root: str, key: int) -> None:
    seg = shmfs.attach(key, 1 << 20, root=root)
    try:
        seg[1] = "small"
        seg[2] = big = large("big")
        assert seg.get(2) == big and seg.get(2) == big  # the second get maps its file
        assert c_batch(seg, [1, 2]) == {1: "small", 2: big}
        seg[3] = large("unmapped")  # not mapped by this handle: the batch goes Python's way
        assert c_batch(seg, [1, 3]) is SLOW
        assert seg.get_many([1, 3]) == {1: "small", 3: large("unmapped")}
    finally:
        seg.destroy()


class _Meddling:
    """A slab file of the handle's whose mapping, when the C call first asks for it, runs
    ``meanwhile`` first (as a collection's finalizer could): a write landing mid-batch."""

    def __init__(self, slab: Any, meanwhile: Callable[[], None]) -> None:
        self._slab = slab
        self._meanwhile = meanwhile

    @property
    def hot(self) -> Any:
        self._meanwhile()
        return self._slab.hot


@pytest.mark.parametrize("writes", [True, False])
def test_a_tmpfs_write_landing_mid_batch_sends_the_batch_the_python_way(
    root: str, key: int, writes: bool
) -> None:
    """No lock: STATE and GENERATION are looked at before the first copy and after the last,
    and writes between them make the C call SLOW. Here index 0 is copied, then two puts
    replace 0 and 5, then 5 is copied: each copy checks out on its own, and only GENERATION
    tells that (old 0, new 5) never was the segment's state. The control: no write, no SLOW."""
    seg = shmfs.attach(key, 1 << 20, root=root)
    writer = shmfs.attach(key, root=root)
    reader = shmfs.attach(key, root=root)
    old = {0: "old 0", 7: "old 7" * 400, 5: "old 5" * 200}  # three slot sizes: three files
    try:
        seg.put_many(old)
        backend: Any = reader._backend
        for index in old:
            assert backend.read(index) is not None  # opens its slab file; the C call maps it
        number, file, _ = split_location(location(reader, 7))
        files = backend._slabs.files
        real = files[number << 16 | file]

        def meanwhile() -> None:
            if writes:
                writer[0] = "new 0"
                writer[5] = "new 5" * 200

        files[number << 16 | file] = _Meddling(real, meanwhile)  # 7's file, mapped after 0's
        try:
            found = c_batch(reader, [0, 7, 5])
        finally:
            files[number << 16 | file] = real
        if writes:
            assert found is SLOW
            assert reader.get_many([0, 7, 5]) == {0: "new 0", 7: old[7], 5: "new 5" * 200}
        else:
            assert found == old
    finally:
        reader.detach()
        writer.detach()
        seg.destroy()


def test_a_batch_asked_again_answers_as_the_first_time(
    pair: tuple[shmfs.Segment, shmfs.Segment],
) -> None:
    """The keys of a batch asked twice in a row are kept, and the dicts of the batches asking
    the same keys again are copies of them with the values replaced (batch.c's result_dict):
    each answer is still this batch's values, in the order asked, whatever changed meanwhile
    and whatever the caller did with an earlier answer."""
    seg, pure = pair
    big = 10**12  # ints made anew compare equal but are not the same objects
    values = {big + n: f"value {n}" for n in range(20)}
    seg.put_many(values)
    asked = [big + n for n in (5, 3, 9, 0, 17)]

    def check(indexes: list[int]) -> dict[int, Any]:
        found = c_batch(seg, indexes)
        if found is SLOW and seg.backend == "sysv":  # an absent index: sysv's C call declines
            assert not set(indexes) <= set(pure.get_many(indexes))
            found = seg.get_many(indexes)
        assert found is not SLOW
        expected = pure.get_many(indexes)
        assert found == expected and list(found) == list(expected), indexes
        return dict(found)

    for _ in range(3):
        answer = c_batch(seg, asked)
        assert answer == {index: values[index] for index in asked}
        answer[big + 99] = "the caller's own"  # a dict of the caller's: not the kept keys
        del answer[asked[0]]
    check([int(str(index)) for index in asked])  # equal ints, other objects
    seg[asked[1]] = ["changed", 1]
    assert check(asked)[asked[1]] == ["changed", 1]
    check(asked[::-1])  # the same keys in another order
    check(asked[:-1])
    check([*asked[:-1], big + 18])  # as many keys, one other
    check([*asked, asked[0]])  # one twice
    del seg[asked[2]]
    assert asked[2] not in check(asked)
    seg[asked[2]] = "back"
    for _ in range(3):
        assert check(asked)[asked[2]] == "back"


@pytest.mark.parametrize("writes", [True, False])
def test_a_tmpfs_write_landing_while_the_batch_unpickles_in_place_is_caught(
    root: str, key: int, writes: bool
) -> None:
    """tmpfs's batch unpickles plain values where they lie, in the slots, and keeps what it made
    only if STATE, GENERATION and each slot's seal are as they were before the first read. Here
    a collection, started by unpickling 1 (a list of lists) after its header and checksum were
    checked, runs a callback that replaces 1 and then stores 2 in the slot 1 had (the slot
    freed last is the next one used): the rest of 1 would be read from 2's bytes. The control:
    the callback writes nothing."""
    seg = shmfs.attach(key, 1 << 20, root=root)
    writer = shmfs.attach(key, root=root)
    reader = shmfs.attach(key, root=root)
    first = {0: "zero", 1: [[n] for n in range(50)]}
    try:
        seg.put_many(first)
        assert reader.get_many([0, 1]) == first  # maps the slab files: no Python code runs
        was = location(reader, 1)  # in the call below before it unpickles
        get_many = reader._hot.get_many
        fired: list[bool] = []

        def meddle(phase: str, info: dict[str, int]) -> None:
            if phase == "start" and armed and not fired:
                fired.append(True)
                if writes:
                    writer[1] = "new"
                    writer[2] = [[n + 100] for n in range(50)]

        armed = False
        threshold = gc.get_threshold()
        gc.callbacks.append(meddle)
        try:
            gc.collect()
            gc.set_threshold(1)
            armed = True
            found = get_many((0, 1))  # a tuple: the call makes none of its own
        finally:
            gc.set_threshold(*threshold)
            gc.callbacks.remove(meddle)
        assert fired
        if writes:
            assert location(reader, 2) == was  # 2 is where 1 was being read from
            assert found is SLOW
            assert reader.get_many([0, 1, 2]) == {0: "zero", 1: "new", 2: seg[2]}
        else:
            assert found == first
    finally:
        reader.detach()
        writer.detach()
        seg.destroy()


def _damage(seg: shmfs.Segment, index: int) -> None:
    """Flip a payload byte of ``index``'s stored frame, behind the segment's back."""
    if seg.backend == "sysv":
        shmid = ipc.shmget(seg.key, 0, 0)
        attachment = ipc.Attachment(shmid, ipc.shm_stat(shmid).size)
        try:
            view = attachment.view
            at = bytes(view).index(f"value {index}".encode())
            view[at] ^= 0x01
        finally:
            attachment.detach()
        return
    if seg.backend == "tmpfs":
        path, offset, _ = slot_of(seg, index)
        with open(path, "rb") as slab:
            byte = slab.read()[offset + 16 + 24]
        pwrite(path, bytes([byte ^ 0x01]), offset + 16 + 24)
        return
    import redis  # noqa: PLC0415  # only for this backend

    client = redis.Redis.from_url(str(seg._spec["root"]))
    try:
        name = f"shmfs:{{{seg.key}}}:vars"
        stored = bytearray(client.hget(name, str(index)) or b"")
        stored[24] ^= 0x01
        client.hset(name, str(index), bytes(stored))
    finally:
        client.close()


def test_a_damaged_value_is_reported_naming_its_index(
    pair: tuple[shmfs.Segment, shmfs.Segment],
) -> None:
    seg, pure = pair
    seg.put_many({index: f"value {index}" for index in range(10)})
    _damage(seg, 5)
    assert c_batch(seg, list(range(10))) is SLOW
    for handle in (seg, pure):
        with pytest.raises(CorruptSegment) as raised:
            handle.get_many(list(range(10)))
        assert raised.value.key == seg.key and raised.value.index == 5, raised.value
        assert "index 5" in str(raised.value)
        with pytest.raises(CorruptSegment) as single:
            handle.get(5)
        assert type(single.value) is type(raised.value)
    assert seg.get_many([4, 6]) == {4: "value 4", 6: "value 6"}


def test_a_decoder_that_fails_raises_as_a_get_does_and_nothing_decodes_twice(
    pair: tuple[shmfs.Segment, shmfs.Segment],
) -> None:
    seg, pure = pair
    seg.put_many({1: Counted("first"), 2: Exploding(), 3: Counted("third")})
    for handle in (seg, pure):
        DECODED.clear()
        with pytest.raises(SerializationError, match="exploding") as raised:
            handle.get_many([1, 2, 3])
        assert isinstance(raised.value.__cause__, ValueError)
        assert DECODED == ["first"]  # decoded once, in order, up to the failure
        with pytest.raises(SerializationError, match="exploding"):
            handle.get(2)
        DECODED.clear()
        assert handle.get_many([3, 1]) == {3: "third", 1: "first"}
        assert DECODED == ["third", "first"]


def test_a_handle_detached_while_its_batch_decodes_says_so(root: str, key: int) -> None:
    """A decoder that detaches the handle and fails: the batch raises what a call after it
    would (SegmentDetached), not the decoder's failure, on the C path as on Python's."""
    seg = shmfs.attach(key, 1 << 20, root=root)
    try:
        seg.put_many({1: "one", 2: DetachingOnLoad()})
        for c_module in (True, False):
            with pytest.MonkeyPatch.context() as patch:
                if not c_module:
                    patch.setattr(hotpath, "_hot", None)
                reader = shmfs.attach(key, root=root)
            assert (reader._hot is not None) is c_module
            backend: Any = reader._backend
            assert backend.read(1) is not None and backend.read(2) is not None  # maps the files
            if c_module:
                assert reader._hot.get_many([1]) == {1: "one"}  # (the C call reads the batch)
            DETACHING.append(reader)
            with pytest.raises(shmfs.SegmentDetached):
                reader.get_many([1, 2])
            assert not DETACHING
    finally:
        seg.destroy()


def test_a_secret_handle_reads_its_batch_the_python_way(
    request: pytest.FixtureRequest, key: int
) -> None:
    url = str(request.getfixturevalue("redis_url"))
    seg = shmfs.attach(key, 1 << 20, backend="redis", root=url, secret=b"k" * 32)
    try:
        assert seg._frames is None and seg._hot is None
        seg.put_many({1: "one", 2: "two"})
        assert seg.get_many([1, 2, 3]) == {1: "one", 2: "two"}
    finally:
        seg.destroy()


# ----------------------------------------------------------------------- the packed reply


def _packed(values: list[bytes | None]) -> bytes:
    lengths = b"".join(
        (ABSENT if value is None else len(value)).to_bytes(4, "little") for value in values
    )
    return lengths + b"".join(value for value in values if value is not None)


def test_a_packed_reply_unpacks_and_a_malformed_one_is_corrupt() -> None:
    values: list[bytes | None] = [b"one", None, b"", b"x" * 300, None]
    assert unpack_many(_packed(values), 5, 1) == values
    assert unpack_many(b"", 0, 1) == []
    good = _packed(values)
    for bad in (good[:-1], good + b"!", good[:3], b"\xff" * 4 + good[4:]):
        with pytest.raises(CorruptSegment, match=r"segment 1: .* malformed"):
            unpack_many(bad, 5, 1)


def test_frames_decodes_a_packed_reply_and_declines_anything_else() -> None:
    frames = hotpath.frames()
    assert frames is not None
    frame = framing.encode(codecs.get_codec("pickle"), "value", None)
    assert isinstance(frame, bytes)
    reply = _packed([frame, None, frame])
    assert frames.decode([7, 8, 9], reply, True) == {7: "value", 9: "value"}
    assert frames.decode([7, 8, 9], reply, False) is SLOW  # a pickle from an untrusted server
    assert frames.decode([7, 8], reply, True) is SLOW  # the wrong count
    assert frames.decode([7, 8, 9], reply[:-1], True) is SLOW
    damaged = bytearray(reply)
    damaged[-3] ^= 0x01
    assert frames.decode([7, 8, 9], bytes(damaged), True) is SLOW
    assert frames.decode([7], _packed([b"bare, not a frame"]), True) is SLOW
    assert frames.decode([7, 2**64], reply, True) is SLOW  # not an index: Python says so
    assert frames.decode([], b"", True) == {}
