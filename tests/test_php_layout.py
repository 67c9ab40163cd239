"""shmfs.backends.sysv.layout: byte-identical with real PHP 8.2 sysvshm, and safe on hostile bytes.

The interop tests run the real ``php`` on a real System V segment with a random key, and always
remove it (the ``sysv_key`` fixture fails a test that leaves one behind). Values are hard-coded
PHP ``serialize()`` strings, so these tests do not depend on any Python serializer: PHP
unserializes them and re-serializes them on put (the driver checks that gives the same bytes).
"""

from __future__ import annotations

import contextlib
import random
import re
import subprocess
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shmfs.backends.sysv import layout
from shmfs.backends.sysv.layout import Header
from shmfs.errors import CorruptSegment, InvalidKey, InvalidKeyType, SegmentFull
from tests.phpbin import run_php

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1

Op = tuple[str, int, bytes]  # ("put", index, serialized value) or ("del", index, b"")

# argv: key, size, then one op per argument: "put:<index>:<hex of serialized value>" or
# "del:<index>". Prints one line per op, "<1|0> <hex of the whole segment>", and always removes
# the segment (exceptions, not exit(), so the finally block runs).
PHP_DRIVER = r"""<?php
$key = (int)$argv[1];
$shm = shm_attach($key, (int)$argv[2]);
try {
    $raw = shmop_open($key, "a", 0, 0);
    foreach (array_slice($argv, 3) as $op) {
        $parts = explode(':', $op);
        if ($parts[0] === 'put') {
            $serialized = hex2bin($parts[2]);
            $value = unserialize($serialized);
            if (serialize($value) !== $serialized) {
                throw new Exception("not a canonical serialization: $serialized");
            }
            $ok = @shm_put_var($shm, (int)$parts[1], $value);
        } else {
            $ok = @shm_remove_var($shm, (int)$parts[1]);
        }
        echo $ok ? '1' : '0', ' ', bin2hex(shmop_read($raw, 0, shmop_size($raw))), "\n";
    }
} finally {
    shm_remove($shm);
}
"""


def segment_exists(key: int) -> bool:
    """Whether ``ipcs -m`` lists a segment with this key."""
    listing = subprocess.run(["ipcs", "-m"], capture_output=True, text=True, check=True).stdout
    return re.search(rf"^0x{key & 0xFFFFFFFF:08x}\s", listing, re.MULTILINE) is not None


@pytest.fixture
def sysv_key() -> Iterator[int]:
    """A fresh random SysV key; the test fails if a segment with it is left behind."""
    key = random.randrange(0x10000000, 0x7FFFFFFF)
    assert not segment_exists(key)
    yield key
    leaked = segment_exists(key)
    if leaked:
        subprocess.run(["ipcrm", "-M", str(key)], check=False)
    assert not leaked, f"segment 0x{key:08x} was left behind"


def php_run(key: int, size: int, ops: list[Op]) -> list[tuple[bool, bytes]]:
    """Apply ``ops`` with real PHP on a new segment; return (result, segment image) per op."""
    args = [f"put:{i}:{v.hex()}" if verb == "put" else f"del:{i}" for verb, i, v in ops]
    done = run_php(PHP_DRIVER, str(key), str(size), *args)
    assert done.returncode == 0, done.stderr.decode()
    rows = []
    for line in done.stdout.decode().splitlines():
        flag, image = line.split(" ")
        rows.append((flag == "1", bytes.fromhex(image)))
    assert len(rows) == len(ops)
    return rows


def py_apply(buf: memoryview, op: Op) -> bool:
    """Apply one op with php_layout; the result PHP's function would return."""
    verb, index, value = op
    if verb == "del":
        return layout.remove(buf, index)
    try:
        layout.put(buf, index, value)
    except SegmentFull:
        return False
    return True


def py_run(size: int, ops: list[Op]) -> list[tuple[bool, bytes]]:
    """The same as :func:`php_run`, on a zero-filled bytearray (the kernel zero-fills too)."""
    buf = memoryview(bytearray(size))
    layout.initialise(buf)
    return [(py_apply(buf, op), bytes(buf)) for op in ops]


def php_string(data: bytes) -> bytes:
    """PHP ``serialize()`` of a (binary) string."""
    return b's:%d:"%s";' % (len(data), data)


def put(index: int, value: bytes) -> Op:
    return ("put", index, value)


def delete(index: int) -> Op:
    return ("del", index, b"")


def first_difference(a: bytes, b: bytes) -> str:
    at = next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))
    return f"first difference at byte {at}: {a[at : at + 16]!r} vs {b[at : at + 16]!r}"


def assert_same_runs(ours: list[tuple[bool, bytes]], php: list[tuple[bool, bytes]]) -> None:
    for step, ((ok, image), (php_ok, php_image)) in enumerate(zip(ours, php, strict=True)):
        assert ok == php_ok, f"op {step}: result {ok} vs PHP {php_ok}"
        assert image == php_image, f"op {step}: {first_difference(image, php_image)}"


# ---------------------------------------------------------------- byte-identical with PHP


@pytest.mark.php
def test_every_op_gives_the_bytes_php_gives(sysv_key: int) -> None:
    """Puts, replaces (growing, shrinking, same size), removes at the front, middle and end,
    a missing remove, INT64_MIN/INT64_MAX/0/negative indices, 0xFF bytes, a new value that
    does not fit, an exact fit to the last byte, then a full segment: after every op all 1024
    bytes (pad bytes and the stale tail included) and the op's result equal PHP's."""
    ops = [
        put(1, b's:5:"hello";'),
        put(2, b"i:42;"),
        put(-3, b'a:2:{i:0;i:1;s:1:"a";b:1;}'),
        put(INT64_MIN, php_string(b"\xff" * 41)),
        put(INT64_MAX, b"d:1.5;"),
        put(1, b's:19:"hello world, longer";'),  # grows; moves to the end
        delete(2),  # the middle
        delete(2),  # missing: false
        put(0, b"N;"),
        put(-1, php_string(b"x" * 2000)),  # a new index that does not fit: false, as in PHP
        put(-3, b"b:0;"),  # shrinks
        delete(INT64_MIN),
        put(7, b's:0:"";'),
        put(INT64_MAX, b"d:2.5;"),  # same size
        delete(7),  # the last chunk: no memmove
        put(-(1 << 40), php_string(bytes(range(256)))),
    ]
    size = 1024
    free = layout.read_header(memoryview(bytearray(py_run(size, ops)[-1][1]))).free
    # The longest string that fits takes exactly the free space; then not even s:0:""; fits.
    longest = max(n for n in range(free) if layout.chunk_size(len(php_string(b"z" * n))) <= free)
    exact = php_string(b"\xff" * longest)
    assert layout.chunk_size(len(exact)) == free
    ops += [
        put(99, exact),
        put(100, b's:0:"";'),  # no room left: false
        delete(1),  # the front, with everything after it moved down
        put(100, b's:0:"";'),
    ]
    ours = py_run(size, ops)
    php = php_run(sysv_key, size, ops)
    assert_same_runs(ours, php)
    results = [ok for ok, _ in ours]
    assert results == [True] * 7 + [False, True, False] + [True] * 6 + [True, False, True, True]


@pytest.mark.php
def test_failed_replace_keeps_the_old_value_where_php_8_2_loses_it(sysv_key: int) -> None:
    """The one documented difference: PHP 8.2 removes the old chunk, then finds no room
    ([PRE] L379-385), so the old value is gone. We check first and leave the segment as it
    was. Otherwise the bytes agree: PHP's image is ours after removing the old value."""
    before = [put(1, b's:5:"hello";'), put(2, b"i:42;"), put(3, b"b:1;")]
    too_big = put(2, php_string(b"y" * 2000))
    php = php_run(sysv_key, 1024, [*before, too_big])

    buf = memoryview(bytearray(1024))
    layout.initialise(buf)
    for op in before:
        py_apply(buf, op)
    image = bytes(buf)
    with pytest.raises(SegmentFull, match="not enough shared memory left"):
        layout.put(buf, *too_big[1:])
    assert bytes(buf) == image
    assert bytes(layout.get(buf, 2) or b"") == b"i:42;"

    php_ok, php_image = php[-1]
    assert php_ok is False
    assert layout.indices(memoryview(bytearray(php_image))) == [1, 3]  # PHP lost index 2
    layout.remove(buf, 2)
    assert bytes(buf) == php_image


@pytest.mark.php
def test_php_reads_a_segment_python_wrote(sysv_key: int) -> None:
    ops = [
        put(1, b's:5:"hello";'),
        put(INT64_MIN, php_string(b"\xff\x00" * 20)),
        put(-3, b'a:2:{i:0;i:1;s:1:"a";b:1;}'),
        put(1, b"d:0.1;"),
        delete(-3),
        put(INT64_MAX, b"N;"),
    ]
    _, image = py_run(1000, ops)[-1]
    expected = {1: b"d:0.1;", INT64_MIN: php_string(b"\xff\x00" * 20), INT64_MAX: b"N;"}
    done = run_php(
        r"""<?php
        $key = (int)$argv[1];
        $raw = shmop_open($key, "n", 0600, 1000);  // exactly our bytes, then PHP's own API
        shmop_write($raw, hex2bin($argv[2]), 0);
        $shm = shm_attach($key, 1000);
        try {
            foreach (array_slice($argv, 3) as $index) {
                $index = (int)$index;
                echo $index, ' ', shm_has_var($shm, $index) ? '1' : '0', ' ',
                    bin2hex(serialize(shm_get_var($shm, $index))), "\n";
            }
            echo 'has -3: ', shm_has_var($shm, -3) ? '1' : '0', "\n";
        } finally {
            shm_remove($shm);
        }
        """,
        str(sysv_key),
        image.hex(),
        *map(str, expected),
    )
    assert done.returncode == 0, done.stderr.decode()
    lines = done.stdout.decode().splitlines()
    assert lines[-1] == "has -3: 0"
    got = {}
    for line in lines[:-1]:
        index, has, value = line.split(" ")
        assert has == "1"
        got[int(index)] = bytes.fromhex(value)
    assert got == expected


@pytest.mark.php
def test_decodes_a_segment_php_wrote(sysv_key: int) -> None:
    """The example of docs/sysv-and-php.md §1.4, written by PHP's own API with PHP literals."""
    done = run_php(
        r"""<?php
        $key = (int)$argv[1];
        $shm = shm_attach($key, 512);
        try {
            $raw = shmop_open($key, "a", 0, 0);
            $dump = fn() => bin2hex(shmop_read($raw, 0, shmop_size($raw))) . "\n";
            shm_put_var($shm, 1, "hello");
            shm_put_var($shm, 2, 42);
            shm_put_var($shm, -3, [1, "a" => true]);
            shm_put_var($shm, 4, 1.5);
            echo $dump();
            shm_put_var($shm, 1, "hello world, longer");
            echo $dump();
            shm_remove_var($shm, 2);
            echo $dump();
        } finally {
            shm_remove($shm);
        }
        """,
        str(sysv_key),
    )
    assert done.returncode == 0, done.stderr.decode()
    created, replaced, removed = (
        memoryview(bytearray.fromhex(line)) for line in done.stdout.decode().splitlines()
    )
    hello, answer = b's:5:"hello";', b"i:42;"
    array, number = b'a:2:{i:0;i:1;s:1:"a";b:1;}', b"d:1.5;"
    longer = b's:19:"hello world, longer";'

    assert bytes(created[:8]) == b"PHP_SM\0\0"
    assert layout.read_header(created) == Header(start=40, end=232, free=280, total=512)
    assert layout.indices(created) == [1, 2, -3, 4]
    assert [layout.find(created, layout.read_header(created), i) for i in (1, 2, -3, 4)] == [
        40,
        88,
        128,
        192,
    ]
    assert bytes(created[128:136]) == b"\xfd" + b"\xff" * 7  # -3, two's complement
    for index, value in [(1, hello), (2, answer), (-3, array), (4, number)]:
        assert bytes(layout.get(created, index) or b"") == value
    assert layout.get(created, 5) is None
    assert layout.stats(created) == layout.Stats(total=512, used=192, free=280, variables=4)

    assert layout.read_header(replaced) == Header(start=40, end=248, free=264, total=512)
    assert layout.indices(replaced) == [2, -3, 4, 1]
    assert bytes(layout.get(replaced, 1) or b"") == longer

    assert layout.read_header(removed) == Header(start=40, end=208, free=304, total=512)
    assert layout.indices(removed) == [-3, 4, 1]
    assert bytes(removed[208:220]) == b's:19:"hello '  # the stale tail is not cleared

    # And our own ops on the same start give the same three images.
    buf = memoryview(bytearray(512))
    layout.initialise(buf)
    for index, value in [(1, hello), (2, answer), (-3, array), (4, number)]:
        layout.put(buf, index, value)
    assert buf == created
    layout.put(buf, 1, longer)
    assert buf == replaced
    assert layout.remove(buf, 2)
    assert buf == removed


@pytest.mark.php
def test_free_space_accounting_matches_php(sysv_key: int) -> None:
    """In 1024 bytes the largest string is 943 bytes: serialized 952, chunk 984 = free."""
    assert layout.chunk_size(len(php_string(b"x" * 943))) == 984 == 1024 - 40
    assert layout.chunk_size(len(php_string(b"x" * 944))) == 992
    ops = [
        put(1, php_string(b"x" * 944)),  # 8 bytes too many
        put(1, php_string(b"x" * 943)),  # exact fit
        put(2, b"N;"),  # nothing left
        put(1, php_string(b"z" * 943)),  # an exact-fit replace of an exact fit
        delete(1),
        put(2, b"N;"),
    ]
    ours = py_run(1024, ops)
    assert_same_runs(ours, php_run(sysv_key, 1024, ops))
    assert [ok for ok, _ in ours] == [False, True, False, True, True, True]


@pytest.mark.php
def test_initialise_writes_what_php_writes_over_old_bytes(sysv_key: int) -> None:
    """PHP initialising a foreign segment full of 0xAA writes the 7 magic bytes and 4 words and
    nothing else (byte 7 and everything after the header keep 0xAA); so do we."""
    done = run_php(
        r"""<?php
        $key = (int)$argv[1];
        $raw = shmop_open($key, "n", 0600, 256);
        shmop_write($raw, str_repeat("\xaa", 256), 0);
        $shm = shm_attach($key, 256);
        echo bin2hex(shmop_read($raw, 0, 256)), "\n";
        shm_remove($shm);
        """,
        str(sysv_key),
    )
    assert done.returncode == 0, done.stderr.decode()
    buf = memoryview(bytearray(b"\xaa" * 256))
    layout.initialise(buf)
    assert bytes(buf) == bytes.fromhex(done.stdout.decode())
    assert bytes(buf[:8]) == b"PHP_SM\0\xaa"


def test_chunk_size_formula() -> None:
    # [PRE] L377, as docs/sysv-and-php.md §1.2 lists: 0:32 1:40 ... 8:40 9:48 ... 17:56
    assert [layout.chunk_size(n) for n in (0, 1, 8, 9, 16, 17)] == [32, 40, 40, 48, 48, 56]
    with pytest.raises(ValueError):
        layout.chunk_size(-1)


def test_initialise_writes_only_the_seven_magic_bytes_and_the_header() -> None:
    buf = memoryview(bytearray(b"\xaa" * 100))
    assert not layout.is_initialised(buf)
    assert layout.initialise(buf) == Header(start=40, end=40, free=60, total=100)
    assert bytes(buf[:8]) == b"PHP_SM\0\xaa"  # byte 7 is neither checked nor written
    assert bytes(buf[40:]) == b"\xaa" * 60
    assert layout.is_initialised(buf)
    assert layout.indices(buf) == []


def test_wipe_zeroes_everything_and_scrub_clears_stale_copies() -> None:
    secret = php_string(b"secret" * 10)
    buf = memoryview(bytearray(4096))
    layout.initialise(buf)
    layout.put(buf, 1, secret)
    layout.put(buf, 2, b"i:1;")
    layout.put(buf, 1, b"i:2;", scrub=True)  # the replaced copy, then the move, leave nothing
    layout.put(buf, 3, secret)
    assert layout.remove(buf, 3, scrub=True)
    assert b"secret" not in bytes(buf)
    assert layout.indices(buf) == [2, 1]
    layout.wipe(buf)
    assert bytes(buf) == bytes(4096)


@pytest.mark.parametrize("index", [True, 1.0, "1", None])
def test_index_of_the_wrong_type(index: object) -> None:
    buf = memoryview(bytearray(100))
    layout.initialise(buf)
    with pytest.raises(InvalidKeyType):
        layout.put(buf, index, b"N;")  # type: ignore[arg-type]  # the wrong type is the point


@pytest.mark.parametrize("index", [INT64_MIN - 1, INT64_MAX + 1])
def test_index_out_of_range(index: int) -> None:
    buf = memoryview(bytearray(100))
    layout.initialise(buf)
    calls: list[Callable[[], object]] = [
        lambda: layout.get(buf, index),
        lambda: layout.remove(buf, index),
        lambda: layout.put(buf, index, b"N;"),
        lambda: layout.find(buf, layout.read_header(buf), index),
    ]
    for call in calls:
        with pytest.raises(InvalidKey, match="signed 64-bit"):
            call()
    assert bytes(buf[40:]) == bytes(60)


def test_get_returns_a_view_of_the_segment_and_reads_work_read_only() -> None:
    image = bytearray(256)
    buf = memoryview(image)
    layout.initialise(buf)
    layout.put(buf, 5, b"i:1;")
    view = layout.get(buf, 5)
    assert isinstance(view, memoryview)
    image[40 + 24 + 2] = ord("7")  # the chunk at 40, its data after 24 bytes, "i:" first
    assert bytes(view) == b"i:7;"  # not a copy
    view.release()
    frozen = memoryview(bytes(image))  # e.g. a segment attached SHM_RDONLY
    assert layout.indices(frozen) == [5]
    assert bytes(layout.get(frozen, 5) or b"") == b"i:7;"
    with pytest.raises(TypeError):
        layout.put(frozen, 6, b"N;")


# ---------------------------------------------------------------- hostile bytes


def words(image: bytearray, offset: int, *values: int) -> None:
    """Overwrite native signed 64-bit words at ``offset`` (test setup, not a live segment)."""
    for n, value in enumerate(values):
        image[offset + 8 * n : offset + 8 * n + 8] = value.to_bytes(8, "little", signed=True)


def hostile(size: int, start: int, end: int, free: int, total: int) -> bytearray:
    image = bytearray(size)
    image[:7] = layout.MAGIC
    words(image, 8, start, end, free, total)
    return image


def one_chunk() -> bytearray:
    buf = memoryview(bytearray(1024))
    layout.initialise(buf)
    layout.put(buf, 1, b"i:42;")
    return bytearray(buf)


def every_call(buf: memoryview) -> list[CorruptSegment]:
    """Call every function that reads the chain, for an absent index so it walks all of it;
    each must raise CorruptSegment."""
    calls: list[Callable[[], object]] = [
        lambda: layout.get(buf, 2),
        lambda: layout.indices(buf),
        lambda: layout.stats(buf),
        lambda: layout.remove(buf, 2),
        lambda: layout.put(buf, 2, b"N;"),
        lambda: layout.put(buf, 2, php_string(b"x" * 5000)),  # corruption beats SegmentFull
    ]
    raised = []
    for call in calls:
        with pytest.raises(CorruptSegment) as info:
            call()
        raised.append(info.value)
    return raised


def chunk_length_max() -> bytearray:
    image = one_chunk()
    words(image, 48, INT64_MAX)  # shm_get_var_chunk_length_bounds.phpt
    return image


def next_zero_inside_end() -> bytearray:
    image = one_chunk()
    words(image, 8, 40, 112, 1024 - 112, 1024)  # end past the chunk, so the walk goes on
    words(image, 80, 5, 0, 0)  # a second "chunk" with next = 0
    return image


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (hostile(1024, 40, 2000, 0, 1024), "end must be within"),  # header_bounds.phpt
        (hostile(1024, -(1 << 40), 40, 984, 1024), "start must be within"),  # start_bounds
        (hostile(1024, 40, 1 << 30, 0, 1024), "end must be within"),  # remove_var_end_bounds
        (hostile(1024, 40, 40, 10_000 - 40, 10_000), "total must be within"),  # total > segsz
        (hostile(1024, 40, 40, 985, 1024), "free must be within"),
        (hostile(1024, 40, 40, -1, 1024), "free must be within"),
        (hostile(1024, 44, 44, 980, 1024), "multiples of 8"),
        (bytearray(b"PHP_SM\0\0"), "segment too small"),  # existing_segment_too_small.phpt
        (bytearray(1024), "not initialised"),
        (chunk_length_max(), "length=9223372036854775807"),
        (next_zero_inside_end(), "next=0"),
    ],
    ids=[
        "end>total",
        "start=-(1<<40)",
        "end=1<<30",
        "total>segsz",
        "free>total-end",
        "free<0",
        "unaligned",
        "8-byte segment",
        "no magic",
        "length=2**63-1",
        "next=0",
    ],
)
def test_hostile_segments_raise_corrupt_segment(image: bytearray, message: str) -> None:
    before = bytes(image)
    buf = memoryview(image)
    raised = every_call(buf)
    assert all(message in str(error) for error in raised), [str(e) for e in raised]
    if "chain" not in str(raised[0]):
        with pytest.raises(CorruptSegment, match=message):
            layout.read_header(buf)
    assert bytes(image) == before  # nothing was written


def test_initialise_refuses_a_segment_smaller_than_the_header() -> None:
    with pytest.raises(CorruptSegment, match="segment too small"):
        layout.initialise(memoryview(bytearray(8)))


# ---------------------------------------------------------------- fuzzing

INTERESTING = [0, 1, -1, 8, 24, 31, 32, 40, 41, 48, 1000, 1024, 1 << 30, INT64_MAX, INT64_MIN]
indices_st = st.one_of(st.integers(-3, 3), st.sampled_from([INT64_MIN, INT64_MAX]))
values_st = st.binary(max_size=120)


@st.composite
def segment_images(draw: st.DrawFn) -> bytearray:
    """Random bytes, a plausible header over random bytes, or a valid image, then mutated."""
    kind = draw(st.sampled_from(["random", "header", "valid"]))
    size = draw(st.integers(0, 600))
    if kind == "random":
        image = bytearray(draw(st.binary(min_size=size, max_size=size)))
        if draw(st.booleans()) and size >= 7:
            image[:7] = layout.MAGIC
        return image
    image = bytearray(max(size, 40))
    buf = memoryview(image)
    layout.initialise(buf)
    if kind == "valid":
        for index, value in draw(st.lists(st.tuples(indices_st, values_st), max_size=8)):
            with contextlib.suppress(SegmentFull):
                layout.put(buf, index, value)
    buf.release()
    for _ in range(draw(st.integers(1, 4))):
        offset = draw(st.integers(0, len(image) - 1))
        if draw(st.booleans()):
            word = draw(st.one_of(st.sampled_from(INTERESTING), st.integers(INT64_MIN, INT64_MAX)))
            raw = word.to_bytes(8, "little", signed=True)
            image[offset : offset + 8] = raw[: len(image) - offset]
        else:
            image[offset] = draw(st.integers(0, 255))
    return image


@settings(max_examples=1000, deadline=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    image=segment_images(),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["find", "get", "put", "remove", "indices"]), indices_st, values_st
        ),
        max_size=6,
    ),
)
def test_fuzz_only_clean_errors(image: bytearray, ops: list[tuple[str, int, bytes]]) -> None:
    """Whatever the bytes, every call ends, reads nothing out of bounds, and either succeeds
    or raises CorruptSegment/SegmentFull; a successful write leaves a valid header."""
    buf = memoryview(image)
    for verb, index, value in ops:
        try:
            if verb == "find":
                layout.find(buf, layout.read_header(buf), index)
            elif verb == "get":
                view = layout.get(buf, index)
                if view is not None:
                    assert 0 <= len(view) <= len(buf)
                    view.release()
            elif verb == "put":
                layout.put(buf, index, value)
                layout.read_header(buf)
            elif verb == "remove":
                layout.remove(buf, index)
                layout.read_header(buf)
            else:
                layout.indices(buf)
        except (CorruptSegment, SegmentFull):
            pass
    assert len(buf) == len(image)


@settings(max_examples=300, deadline=500)
@given(
    image=segment_images(),
    header=st.builds(
        Header, *[st.one_of(st.sampled_from(INTERESTING), st.integers(-(1 << 70), 1 << 70))] * 4
    ),
    index=indices_st,
)
def test_fuzz_find_with_any_header(image: bytearray, header: Header, index: int) -> None:
    """find() trusts no Header it is given: a bogus one is CorruptSegment, not IndexError."""
    try:
        pos = layout.find(memoryview(image), header, index)
    except CorruptSegment:
        return
    assert pos == -1 or 40 <= pos <= len(image) - 32


@settings(max_examples=150, deadline=500)
@given(
    size=st.integers(40, 700),
    ops=st.lists(
        st.tuples(st.booleans(), st.integers(-4, 4), st.binary(max_size=200)), max_size=25
    ),
)
def test_model(size: int, ops: list[tuple[bool, int, bytes]]) -> None:
    """Against a dict: values, last-write order, free-space accounting, untouched on failure."""
    buf = memoryview(bytearray(size))
    layout.initialise(buf)
    model: dict[int, bytes] = {}
    for is_put, index, value in ops:
        before = bytes(buf)
        if is_put:
            room = (
                size - 40 - sum(layout.chunk_size(len(v)) for k, v in model.items() if k != index)
            )
            if layout.chunk_size(len(value)) <= room:
                layout.put(buf, index, value)
                model.pop(index, None)
                model[index] = value
            else:
                with pytest.raises(SegmentFull):
                    layout.put(buf, index, value)
                assert bytes(buf) == before
        else:
            assert layout.remove(buf, index) == (index in model)
            model.pop(index, None)
        header = layout.read_header(buf)
        assert header.end + header.free == header.total == size
        assert layout.indices(buf) == list(model)
        for k, v in model.items():
            assert bytes(layout.get(buf, k) or b"") == v
