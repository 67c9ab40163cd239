"""The C fast path of tmpfs gets and puts (shmfs._hot, shmfs.hotpath).

Every tmpfs test already runs twice, with and without it (conftest's ``tmpfs-pure``). These
tests are about the fast path itself: that the build made it, that it writes the very bytes the
Python path writes and reads what the Python path wrote, and that each case outside its common
case goes the Python way, where the right thing (or the right error) happens.
"""

from __future__ import annotations

import mmap
import os
import random
import shutil
import signal
import subprocess
import sys
import sysconfig
import textwrap
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shmfs
from shmfs import codecs, hotpath, pickling
from shmfs import frame as framing
from shmfs.backends.tmpfs import segdir as sd
from shmfs.locking import lock_holder_pid
from tests.conftest import pure_python, segment_ref
from tests.tmpfs_files import large, pwrite, slot_of
from tests.workers import (
    Children,
    checked_value,
    hold_lock,
    is_intact,
    read_while,
    seq_bytes,
    write_bytes,
    write_small,
)

WAIT = 60
SMALL_VALUES = [
    "x" * 100,
    "",
    "é" * 300,
    0,
    -(1 << 70),
    3.5,
    None,
    True,
    b"\x00\xff" * 50,
    {"a": 1, "b": [1, 2, (3, 4)], "c": {"d": None}},
    [{"k": frozenset({1, 2})}, {1.5, 2.5}],
    "y" * 60_000,  # near the fast path's limit, still in it
]


@pytest.fixture
def backend() -> str:
    return "tmpfs"


@pytest.fixture
def hot(seg: shmfs.Segment) -> hotpath.Hot:
    if seg._hot is None:
        pytest.skip("the C fast path is off (not built, or SHMFS_PURE_PYTHON)")
    return seg._hot


@pytest.fixture
def pure(attach: Callable[..., shmfs.Segment], seg: shmfs.Segment) -> Iterator[shmfs.Segment]:
    """A second handle on ``seg``'s segment without the fast path."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hotpath, "_hot", None)
        other = attach(seg.key)
    assert other._hot is None
    yield other


def store(seg: shmfs.Segment, index: int, value: Any) -> None:
    """Put ``value`` and, if it has a file of its own, map it in this handle (a first put only
    creates the file, a first get copies it with pread, a second get maps it): the next put of
    ``index`` may then be a fast one. (A small value's slab file is mapped on first use.)"""
    seg[index] = value
    seg.get(index)
    seg.get(index)


def python_reports(
    seg: shmfs.Segment, hot: hotpath.Hot, error: type[Exception], match: str
) -> None:
    """The fast get leaves index 1 to the Python path, which raises ``error``."""
    assert hot.get(1) is hotpath.SLOW
    with pytest.raises(error, match=match):
        seg[1]


def frame(seg: shmfs.Segment, index: int) -> bytes:
    """The stored frame of ``index``, as the Python path finds it."""
    data = seg._backend._read_locked(index)
    assert isinstance(data, (bytes, memoryview)), type(data)
    return bytes(data)


def test_the_build_made_it() -> None:
    """pip builds the module where a C compiler is (CI must: it checks the fast path)."""
    if os.environ.get("SHMFS_PURE_PYTHON"):
        pytest.skip("SHMFS_PURE_PYTHON turns it off")
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if not os.environ.get("CI") and shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}): shmfs runs on its pure-Python path")
    assert hotpath.available(), "shmfs._hot was not built: see pip's build output"


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=1500), offset=st.integers(0, 7), start=st.integers(0, 2**32 - 1))
def test_the_checksum_is_zlibs(data: bytes, offset: int, start: int) -> None:
    """The C checksum (its own, or zlib's past 320 bytes without folding) is zlib.crc32, at any
    alignment."""
    if not hotpath.available():
        pytest.skip("the C fast path is off (not built, or SHMFS_PURE_PYTHON)")
    from shmfs import _hot  # noqa: PLC0415  # only where it is built

    view = memoryview(bytes(offset) + data)[offset:]
    assert _hot.crc32(view) == zlib.crc32(data)
    assert _hot.crc32(view, start) == zlib.crc32(data, start)


def test_the_checksum_is_zlibs_at_every_length() -> None:
    """Folded 16 bytes a step from 64 bytes on (where the CPU can), by the tables below that and
    for the last few: every length up to 1 KiB and a few past, at odd alignments too."""
    if not hotpath.available():
        pytest.skip("the C fast path is off (not built, or SHMFS_PURE_PYTHON)")
    from shmfs import _hot  # noqa: PLC0415  # only where it is built

    block = random.Random(7).randbytes(70_000)
    for length in [*range(1100), 4095, 4096, 4097, 65_536]:
        offset = length % 13
        data = block[offset : offset + length]
        view = memoryview(block)[offset : offset + length]
        assert _hot.crc32(view) == zlib.crc32(data), length
        assert _hot.crc32(view, length * 7919) == zlib.crc32(data, length * 7919), length


@pytest.mark.parametrize("value", SMALL_VALUES, ids=lambda value: repr(value)[:20])
def test_c_writes_the_bytes_python_writes(
    seg: shmfs.Segment, pure: shmfs.Segment, hot: hotpath.Hot, value: Any
) -> None:
    store(seg, 1, value)  # a file sized for it, mapped here
    store(seg, 2, value)
    assert hot.put(1, codecs.get_codec("cloudpickle").id, value) is None
    pure[2] = value
    assert frame(seg, 1) == frame(seg, 2)
    assert hot.get(1) == hot.get(2) == pure[1] == value
    assert type(hot.get(1)) is type(value)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    text=st.text(max_size=300)
    | st.text(st.characters(codec="utf-8"), min_size=200, max_size=1200)
    | st.sampled_from(["\udc80", "a\ud800b", "x" * 255, "x" * 256, "é" * 128])
    | st.binary(max_size=300)
)
def test_c_pickles_a_str_as_pickle_does(
    seg: shmfs.Segment, pure: shmfs.Segment, hot: hotpath.Hot, text: str | bytes
) -> None:
    """The C put pickles a str, or a short bytes, itself: byte for byte what pickle.dumps
    writes, both lengths of a str's opcode, any UTF-8; a lone surrogate is left to
    pickle.dumps (surrogatepass), and so is a bytes of 256 or more."""
    seg[1] = text  # the slot class's first slab file is Python's to add
    assert hot.put(1, codecs.get_codec("cloudpickle").id, text) is None
    pure[2] = text
    assert frame(seg, 1) == frame(seg, 2)
    assert seg[1] == text


@pytest.mark.parametrize("codec", ["cloudpickle", "pickle", "json", "raw"])
def test_each_reads_what_the_other_wrote(
    attach: Callable[..., shmfs.Segment], key: int, hot: hotpath.Hot, codec: str
) -> None:
    value: Any = b"raw bytes" if codec == "raw" else {"n": [1, 2.5, "three"]}
    fast = attach(key, codec=codec)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hotpath, "_hot", None)
        slow = attach(key, codec=codec)
    fast[1] = slow[2] = "first" if codec != "raw" else b"first"
    fast[1], slow[2] = value, value
    for handle in (fast, slow):
        assert handle[1] == handle[2] == value
        assert handle[1] == handle[2] == value  # now read from the mappings
    assert fast._hot is not None
    assert fast._hot.get(1) == fast._hot.get(2) == value  # decoded in C, whatever the codec


def test_values_that_are_not_plain_go_through_cloudpickle(
    seg: shmfs.Segment, pure: shmfs.Segment, hot: hotpath.Hot
) -> None:
    store(seg, 1, "placeholder")
    assert hot.put(1, codecs.get_codec("cloudpickle").id, lambda x: x) is hotpath.SLOW
    seg[1] = lambda x: x * 3
    assert pure[1](2) == 6
    assert hot.get(1)(3) == 9  # a lambda, unpickled in C's call of the codec


class Text(str):
    """A str subclass: not plain (cloudpickle writes its class)."""


_LEAVES = (
    st.text(max_size=4)
    | st.binary(max_size=4)
    | st.integers()
    | st.floats(allow_nan=False)
    | st.booleans()
    | st.none()
    | st.builds(Text, st.text(max_size=2))
    | st.decimals(allow_nan=False, places=2)
)


def _nested(depth: int) -> Any:
    value: Any = 1
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


PLAIN_OR_NOT = st.integers(1, 7).map(_nested) | st.recursive(
    _LEAVES,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=2), children, max_size=3)
        | st.frozensets(st.integers(), max_size=3)
        | st.sets(st.text(max_size=2), max_size=3)
        | st.lists(st.integers(0, 9), min_size=62, max_size=67)
    ),  # around the 64-item limit
    max_leaves=12,
)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=PLAIN_OR_NOT)
def test_c_takes_exactly_the_values_python_calls_plain(
    seg: shmfs.Segment, hot: hotpath.Hot, value: Any
) -> None:
    """The C check of plainness is ``codecs.is_plain``'s, depth and size limits included: a
    value taken by the fast put is written as Python's put would (pickle, not cloudpickle)."""
    # The value itself first, by Python: a slot of its class, or a file of its own that it
    # fits, so that only plainness decides whether the fast put takes it again.
    store(seg, 1, value)
    fast = hot.put(1, codecs.get_codec("cloudpickle").id, value) is None
    assert fast == codecs.is_plain(value)
    if fast:
        assert seg[1] == value


def test_get_fast_is_the_c_get(seg: shmfs.Segment, hot: hotpath.Hot) -> None:
    store(seg, 1, ("small", 1))
    assert seg.get_fast(1) == ("small", 1)
    assert seg.get_fast == hot.get


def test_put_if_head_goes_fast_over_its_own_head(seg: shmfs.Segment, hot: hotpath.Hot) -> None:
    head = pickling.tuple_head("mine")
    store(seg, 1, ("mine", 1, None, 0.0))
    assert seg.put_if_head(1, ("mine", 2, None, 0.0), pickling.TUPLE_HEAD_AT, head)
    assert seg[1] == ("mine", 2, None, 0.0)
    store(seg, 2, ("theirs", 1, None, 0.0))
    assert not seg.put_if_head(2, ("mine", 2, None, 0.0), pickling.TUPLE_HEAD_AT, head)
    assert seg[2] == ("theirs", 1, None, 0.0)
    assert not seg.put_if_head(
        2, ("mine", 2, None, 0.0), pickling.TUPLE_HEAD_AT, head, or_absent=True
    )
    assert not seg.put_if_head(3, ("mine", 3, None, 0.0), pickling.TUPLE_HEAD_AT, head)
    assert 3 not in seg  # an empty index takes it only when asked to
    assert seg.put_if_head(3, ("mine", 3, None, 0.0), pickling.TUPLE_HEAD_AT, head, or_absent=True)
    assert seg[3] == ("mine", 3, None, 0.0) and len(seg) == 3


def test_a_missing_or_too_big_value_is_slow(seg: shmfs.Segment, hot: hotpath.Hot) -> None:
    assert hot.get(1) is hotpath.SLOW
    assert seg.get(1, "absent") == "absent"
    # Frames past 64 KiB that are not one bytes in an unframed pickle (pickle frames a bytes
    # value under 64 KiB, so one just short of it is framed): read in pieces by Python.
    for big in ("w" * 70_000, ["w" * 40_000, "v" * 40_000], {1: b"u" * 70_000}, b"z" * 65_496):
        store(seg, 1, big)
        assert hot.get(1) is hotpath.SLOW
        assert seg[1] == big
        assert hot.put(1, codecs.get_codec("pickle").id, big) is hotpath.SLOW  # past 64 KiB


@pytest.mark.parametrize("size", [65_000, 65_600, 100_000, 500_000])
def test_a_large_bytes_value_is_read_by_the_c_get(
    seg: shmfs.Segment, hot: hotpath.Hot, size: int
) -> None:
    """A bytes value past 64 KiB is copied once, straight into the bytes the C get returns
    (what Python reads as a Split); a smaller one's frame is small, and read whole."""
    value = os.urandom(size)
    store(seg, 1, value)
    got = hot.get(1)
    assert got == value and type(got) is bytes


@pytest.mark.parametrize("where", ["head", "first edge", "last edge", "stop"])
def test_damage_to_a_large_bytes_value_is_reported_by_the_python_path(
    seg: shmfs.Segment, hot: hotpath.Hot, where: str
) -> None:
    """Where the checksum of a large frame reaches (its header, its first and last 4 KiB) and
    its STOP opcode: damage there leaves the C get to Python, which raises."""
    value = os.urandom(200_000)
    store(seg, 1, value)
    var = seg._backend._large.vars[1]
    start = 64 + (var.version[1] >> 32 & 1) * var.capacity
    length = framing.HEADER.size + 7 + len(value) + 1  # PROTO, BINBYTES and its length, STOP
    at = {
        "head": start + 10,
        "first edge": start + framing.HEADER.size + 100,
        "last edge": start + length - 100,
        "stop": start + length - 1,
    }[where]
    with memoryview(var._mm) as whole:
        whole[at] ^= 0x01
    python_reports(seg, hot, shmfs.CorruptSegment, "checksum|STOP|header says")


def test_c_reads_of_large_bytes_beside_a_writer_are_whole(
    attach: Callable[..., shmfs.Segment], key: int, spawn_ctx: Any
) -> None:
    """No torn or older large bytes from the C get while another process rewrites them: the
    middle of such a value is not checksummed, so only the seqlock keeps a copy whole. (A
    build without the seqlock's second look fails this: copies of megabytes overlap the
    writer's next-but-one put often enough.)"""
    seg = attach(key, 64 << 20)
    if seg._hot is None:
        pytest.skip("the C fast path is off (not built, or SHMFS_PURE_PYTHON)")
    hot = seg._hot
    store(seg, 1, seq_bytes(0, 2_000_000))
    started = spawn_ctx.Event()
    writers = Children(spawn_ctx)
    fast = torn = backwards = last = 0
    try:
        writer = writers.start(write_bytes, segment_ref(seg), 1, 1500, started)
        assert started.wait(WAIT)
        deadline = time.monotonic() + WAIT
        while writer.is_alive() and time.monotonic() < deadline:
            value = hot.get(1)
            if value is hotpath.SLOW:
                value = seg[1]
            else:
                fast += 1
            seq = int.from_bytes(value[:8], "little")
            torn += value != seq_bytes(seq, len(value))
            backwards += seq < last
            last = seq
        assert writers.results(WAIT) == [1500]
    finally:
        writers.stop()
    assert torn == backwards == 0
    assert fast > 50, fast
    assert seg[1] == seq_bytes(1500, 600_000)


def test_damage_is_reported_by_the_python_path(seg: shmfs.Segment, hot: hotpath.Hot) -> None:
    """About files: a value with a file of its own, damaged in its mapping."""
    store(seg, 1, large("precious"))
    var = seg._backend._large.vars[1]
    with memoryview(var._mm) as whole:
        start = 64 + (var.version[1] >> 32 & 1) * var.capacity + framing.HEADER.size
        whole[start] ^= 0x01
    python_reports(seg, hot, shmfs.CorruptSegment, "checksum")


def test_damage_in_a_slot_is_reported_by_the_python_path(
    seg: shmfs.Segment, hot: hotpath.Hot
) -> None:
    """A small value's slot, damaged in its payload: the C get leaves it to Python, which
    raises ``CorruptSegment``."""
    store(seg, 1, "precious")
    path, offset, _ = slot_of(seg, 1)
    with open(path, "rb") as slab:
        byte = slab.read()[offset + 16 + framing.HEADER.size]
    pwrite(path, bytes([byte ^ 0x01]), offset + 16 + framing.HEADER.size)
    python_reports(seg, hot, shmfs.CorruptSegment, "checksum")


def test_a_decoder_failure_is_reported_by_the_fast_get_itself(
    seg: shmfs.Segment, hot: hotpath.Hot
) -> None:
    """Once decoded, a value is not decoded again by the Python path (a pickle's side effects
    would run twice): the C get raises the error the Python get would, from the decoder's."""
    payload = b"{not json"  # a sound frame around bytes its codec cannot decode
    first = framing.first_word(codecs.get_codec("json").id)
    crc = zlib.crc32(
        payload, zlib.crc32(first.to_bytes(8, "little") + len(payload).to_bytes(8, "little"))
    )
    stored = first.to_bytes(8, "little") + len(payload).to_bytes(8, "little")
    stored += crc.to_bytes(8, "little") + payload
    seg[1] = "placeholder"
    backend = seg._backend
    backend.acquire(None)
    try:
        backend.write(1, stored)
    finally:
        backend.release()
    with pytest.raises(shmfs.SerializationError, match="json") as raised:
        hot.get(1)
    assert isinstance(raised.value.__cause__, ValueError)
    with pytest.raises(shmfs.SerializationError, match="json"):
        seg[1]


def test_an_untrusted_writer_is_refused_by_the_python_path(
    seg: shmfs.Segment, hot: hotpath.Hot
) -> None:
    """About files: values with a file of their own, one of them marked untrusted."""
    store(seg, 1, {"pickled": True, "pad": large("p")})
    store(seg, 2, large("also pickled"))
    var = seg._backend._large.vars[1]
    var.hot = (*var.hot[:2], False, var.hot[3])  # as if another, untrusted, uid had written it
    var.trusted = False
    python_reports(seg, hot, shmfs.UnsafeSegment, "untrusted")
    assert hot.get(2) == large("also pickled")


def test_a_segment_with_a_secret_never_takes_it(
    attach: Callable[..., shmfs.Segment], key: int
) -> None:
    signed = attach(key, secret=b"k" * 32)
    assert signed._hot is None
    signed[1] = "signed"
    assert signed[1] == "signed"


def test_a_live_writers_dirty_state_is_slow(seg: shmfs.Segment, hot: hotpath.Hot) -> None:
    seg[1] = "before"
    meta = seg._backend._meta
    meta[sd.STATE] = sd.DIRTY | os.getpid() << 32  # a write of ours in progress
    try:
        assert hot.get(1) is hotpath.SLOW
        assert seg[1] == "before"  # the Python path reads it: the writer is alive
    finally:
        meta[sd.STATE] = 0


def test_after_a_recovery_the_mappings_are_renewed(seg: shmfs.Segment, hot: hotpath.Hot) -> None:
    seg[1] = "kept"
    meta = seg._backend._meta
    meta[sd.RECOVERIES] += 1  # another process repaired after a dead writer
    assert hot.get(1) is hotpath.SLOW
    assert hot.put(1, codecs.get_codec("cloudpickle").id, "x") is hotpath.SLOW
    assert seg[1] == "kept"  # the Python path drops its mappings and tells the fast path
    assert seg[1] == "kept"  # and maps the variable again on its second read
    assert hot.get(1) == "kept"


def test_a_replaced_file_is_followed(
    seg: shmfs.Segment, pure: shmfs.Segment, hot: hotpath.Hot
) -> None:
    """About files: a value with a file of its own, replaced by a bigger one's file."""
    store(seg, 1, large("mapped"))
    pure[1] = "big" * 10_000  # outgrows its file: a new file, and ours is retired
    assert hot.get(1) is hotpath.SLOW
    assert seg[1] == "big" * 10_000
    assert hot.get(1) == "big" * 10_000


def test_a_full_segment_refuses_and_keeps_the_old_value(
    attach: Callable[..., shmfs.Segment], key: int
) -> None:
    seg = attach(key, 200)
    if seg._hot is None:
        pytest.skip("the C fast path is off (not built, or SHMFS_PURE_PYTHON)")
    seg[1] = "x" * 100
    assert seg._hot.put(1, codecs.get_codec("cloudpickle").id, "y" * 190) is hotpath.SLOW
    with pytest.raises(shmfs.SegmentFull):
        seg[1] = "y" * 190
    assert seg[1] == "x" * 100


def test_a_value_that_outgrows_its_slot_gets_a_new_file(
    seg: shmfs.Segment, hot: hotpath.Hot
) -> None:
    """About files: a value with a file of its own outgrowing it."""
    store(seg, 1, large("x"))
    inode = seg._backend._large.vars[1].inode
    assert hot.put(1, codecs.get_codec("cloudpickle").id, "y" * 20_000) is hotpath.SLOW
    seg[1] = "y" * 20_000
    assert seg[1] == "y" * 20_000  # from the new file, mapped in place of the retired one
    assert seg._backend._large.vars[1].inode != inode


def test_waiters_and_views_make_puts_slow(seg: shmfs.Segment, hot: hotpath.Hot) -> None:
    """About files: views in place exist only for values with a file of their own."""
    seg[1] = b"viewed" * 1000
    payload = b"new" * 2000
    cloud = codecs.get_codec("cloudpickle").id
    with seg.view(1) as view:
        assert hot.put(1, cloud, payload) is hotpath.SLOW
        seg[1] = payload  # the Python path publishes a new file; the view stays as it was
        assert bytes(view) == b"viewed" * 1000
    assert seg[1] == payload
    assert seg[1] == payload  # maps the new file
    watching = seg.watch(1, timeout=WAIT)
    try:
        assert hot.put(1, cloud, payload) is hotpath.SLOW  # Python wakes the waiter
    finally:
        watching.close()
    assert hot.put(1, cloud, payload) is None


def test_a_read_only_mapping_is_refused_by_the_python_path(
    seg: shmfs.Segment, hot: hotpath.Hot
) -> None:
    """About files: a value with a file of its own, mapped read-only."""
    store(seg, 1, large("theirs"))
    var = seg._backend._large.vars[1]
    var.hot = (*var.hot[:3], False)  # as if the file were another trusted user's, read-only
    var.writable = False
    assert hot.put(1, codecs.get_codec("cloudpickle").id, large("ours")) is hotpath.SLOW
    with pytest.raises(shmfs.UnsafeSegment, match="write permission"):
        seg[1] = large("ours")
    assert seg[1] == large("theirs")


def test_a_destroyed_segment_is_reported(
    seg: shmfs.Segment, pure: shmfs.Segment, hot: hotpath.Hot
) -> None:
    seg[1] = "doomed"
    pure.destroy()
    assert hot.get(1) is hotpath.SLOW
    with pytest.raises(shmfs.SegmentNotFound):
        seg[1] = "again"
    with pytest.raises(shmfs.SegmentNotFound):
        seg.get(1)


def test_a_detached_handle_drops_its_references(seg: shmfs.Segment, hot: hotpath.Hot) -> None:
    seg[1] = "x"
    seg.detach()
    assert hot.get(1) is hotpath.SLOW
    assert hot.put(1, 0, b"") is hotpath.SLOW
    with pytest.raises(shmfs.SegmentDetached):
        seg[1]


def test_inside_this_threads_lock_it_writes_under_that_lock(
    seg: shmfs.Segment, hot: hotpath.Hot
) -> None:
    """A put inside ``seg.lock()`` writes under the flock the block holds: it neither takes
    it again nor gives it back."""
    store(seg, 1, 0)
    fd = seg._backend._lock_fd
    cloud = codecs.get_codec("cloudpickle").id
    with seg.lock():
        assert hot.put(1, cloud, 1) is None
        assert lock_holder_pid(fd) == os.getpid()
        assert seg._backend._lock.held
        with seg.lock():
            assert hot.put(1, cloud, 2) is None
        assert lock_holder_pid(fd) == os.getpid()
        assert seg[1] == 2
    assert lock_holder_pid(fd) is None
    assert hot.put(1, cloud, 3) is None
    assert lock_holder_pid(fd) is None  # and a put outside gave its own flock back
    assert seg[1] == 3


def test_another_threads_lock_makes_the_put_wait(seg: shmfs.Segment, hot: hotpath.Hot) -> None:
    store(seg, 1, "before")
    cloud = codecs.get_codec("cloudpickle").id
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with seg.lock():
            held.set()
            release.wait(WAIT)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(WAIT)
        assert hot.put(1, cloud, "during") is hotpath.SLOW
        assert seg[1] == "before"
    finally:
        release.set()
        thread.join(WAIT)
    assert hot.put(1, cloud, "after") is None
    assert seg[1] == "after"


def test_a_lock_held_elsewhere_makes_the_put_wait(
    attach: Callable[..., shmfs.Segment], key: int, spawn_ctx: Any
) -> None:
    seg = attach(key, lock_timeout=0.2)
    if seg._hot is None:
        pytest.skip("the C fast path is off (not built, or SHMFS_PURE_PYTHON)")
    seg[1] = "before"
    held, release = spawn_ctx.Event(), spawn_ctx.Event()
    children = Children(spawn_ctx)
    try:
        children.start(hold_lock, segment_ref(seg), held, release)
        assert held.wait(WAIT)
        assert seg._hot.put(1, codecs.get_codec("cloudpickle").id, "x") is hotpath.SLOW
        with pytest.raises(shmfs.LockTimeout):
            seg[1] = "during"
    finally:
        release.set()
        children.stop()
    seg[1] = "after"
    assert seg[1] == "after"


def test_a_forked_child_reopens_before_it_goes_fast(seg: shmfs.Segment, hot: hotpath.Hot) -> None:
    store(seg, 1, "parent's")
    with seg.lock():  # the child must neither see this flock as its own nor release it
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            code = 1
            try:
                slow_first = hot.get(1) is hotpath.SLOW
                cloud = codecs.get_codec("cloudpickle").id
                slow_put = hot.put(1, cloud, "child's") is hotpath.SLOW
                readable = seg.get(1) == "parent's"  # reopens the handle, resets the fast path
                fast_after = hot.get(1) == "parent's"
                code = 0 if slow_first and slow_put and readable and fast_after else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert seg._backend._lock.held  # still ours
    seg[1] = "parent's again"
    assert seg[1] == "parent's again"


@pytest.mark.parametrize("writer_pure", [False, True], ids=["C writer", "Python writer"])
def test_c_and_python_readers_beside_either_writer(
    seg: shmfs.Segment, hot: hotpath.Hot, spawn_ctx: Any, writer_pure: bool
) -> None:
    """No torn or older values, whichever path reads and writes: one reader of each kind during
    3000 puts in place."""
    seg[1] = checked_value(0, 1500)
    ref = segment_ref(seg)
    stop, started = spawn_ctx.Event(), spawn_ctx.Event()
    readies = [spawn_ctx.Event(), spawn_ctx.Event()]
    readers = Children(spawn_ctx)
    writers = Children(spawn_ctx)
    try:
        for ready, reader_pure in zip(readies, (False, True), strict=True):
            readers.start(read_while, {**ref, "pure": reader_pure}, 1, stop, ready)
        for ready in readies:
            assert ready.wait(WAIT)
        writers.start(write_small, {**ref, "pure": writer_pure}, 1, 3000, started)
        assert writers.results(WAIT) == [3000]
        stop.set()
        counts = readers.results(WAIT)
    finally:
        stop.set()
        writers.stop()
        readers.stop()
    for count in counts:
        assert count["bad"] == count["backwards"] == count["missing"] == 0, counts
        assert count["intact"] > 50, counts
    assert is_intact(seg[1]) and seg[1]["seq"] == 3000


def test_sigkilled_c_writers_leave_the_old_or_the_new_value(
    seg: shmfs.Segment, hot: hotpath.Hot, spawn_ctx: Any
) -> None:
    """SIGKILL at random instants of a loop of fast puts (values that stay in their slots)."""
    seg[1] = checked_value(0, 1500)
    ref = segment_ref(seg)
    for round_no in range(15):
        started = spawn_ctx.Event()
        writers = Children(spawn_ctx)
        proc = writers.start(write_small, ref, 1, 10**9, started)
        try:
            assert started.wait(WAIT)
            # Let it run a random number of puts; no sleep orders anything here.
            for _ in range(round_no * 200):
                seg.get(1)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(WAIT)
        with seg.lock(timeout=5):  # the kernel freed the dead writer's flock
            value = seg[1]
        assert is_intact(value), f"round {round_no}: torn value"
        assert seg.stats()["variables"] == 1
    seg[1] = "after"
    assert hot.get(1) == "after"


@pytest.mark.parametrize("kind", ["Mapping", "mmap"])
def test_a_mapping_does_what_largefile_uses_of_mmap(root: str, kind: str) -> None:
    """shmfs._hot.Mapping against mmap.mmap, on everything largefile.py does with a mapping."""
    if kind == "Mapping" and not hotpath.available():
        pytest.skip("the C module is off (not built, or SHMFS_PURE_PYTHON)")
    from shmfs import _hot  # noqa: PLC0415  # only where it is built

    path = os.path.join(root, "file")
    with open(path, "wb") as file:
        file.write(bytes(range(256)) * 32)

    def mapped(writable: bool) -> Any:
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        try:
            if kind == "Mapping":
                return _hot.Mapping(fd, 8192, writable)
            access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
            return mmap.mmap(fd, 8192, access=access)
        finally:
            os.close(fd)  # the mapping stays valid without it

    mm = mapped(True)
    assert len(mm) == 8192 and not mm.closed
    assert mm[0:4] == b"\x00\x01\x02\x03" and mm[8190:9000] == b"\xfe\xff" and mm[5:5] == b""
    mm[10:13] = b"abc"
    with pytest.raises(IndexError):
        mm[0:2] = b"xyz"  # the wrong size
    words = memoryview(mm).cast("Q")
    words[2] = 7
    with pytest.raises(BufferError):
        mm.close()  # a view of it is alive
    words.release()
    mm.close()
    mm.close()  # idempotent
    assert mm.closed
    with pytest.raises(ValueError):
        mm[0:1]
    with pytest.raises(ValueError):
        memoryview(mm)
    reader = mapped(False)
    assert reader[10:13] == b"abc" and reader[16:24] == (7).to_bytes(8, "little")
    with pytest.raises(TypeError):
        reader[0:1] = b"x"
    with memoryview(reader) as view:
        assert view.readonly
    reader.close()
    os.unlink(path)


def test_shmfs_pure_python_turns_all_of_it_off(root: str) -> None:
    """With SHMFS_PURE_PYTHON=1 at start-up, no C at all: Python's gets and puts, and mmap's
    mappings (each with a descriptor before Python 3.13, so fewer of them per handle)."""
    script = textwrap.dedent(
        """
        import sys
        import shmfs
        from shmfs import hotpath
        from shmfs.backends import tmpfs

        seg = shmfs.attach(0x5E00_0001, root=sys.argv[1])
        seg[1] = {"a": "x" * 5000}  # a file of its own
        seg[1] = "y" * 5000  # in place, through Python
        assert seg[1] == "y" * 5000 and seg._hot is None and not hotpath.available()
        mapping = type(seg._backend._large.vars[1]._mm).__name__
        print(hotpath.maps_without_descriptors(), tmpfs.MAX_MAPPINGS, mapping)
        seg.destroy()
        """
    )
    env = {**os.environ, "SHMFS_PURE_PYTHON": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, root],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    without_descriptors, max_mappings, mapping = done.stdout.split()
    assert mapping == "mmap"
    if sys.version_info < (3, 13):
        assert without_descriptors == "False"
        assert int(max_mappings) <= 16384


def test_pure_python_fixture_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    pure_python(monkeypatch)
    assert not hotpath.available()
    assert hotpath.new_hot({}, {}, memoryview(b"")) is None
