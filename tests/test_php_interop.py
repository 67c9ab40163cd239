"""shmfs and real PHP (Debian's php-cli) on one System V segment, both ways.

Never a re-implementation of PHP: every check runs ``php``. CI installs php-cli, and there a
missing php fails these tests instead of skipping them (tests/phpbin.py).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

import shmfs
from shmfs import phpserial
from shmfs.backends.sysv import ipc
from shmfs.backends.sysv import layout as php_layout
from shmfs.php import shm_attach, shm_put_var, shm_remove, shm_remove_var
from tests.phpbin import php_binary, run_php
from tests.workers import Children

pytestmark = [pytest.mark.php, pytest.mark.usefixtures("sysv_paths")]

# The same values, written once as PHP literals and once as Python values.
VALUES: list[tuple[str, Any]] = [
    ("null", None),
    ("true", True),
    ("false", False),
    ("0", 0),
    ("PHP_INT_MIN", -(2**63)),
    ("PHP_INT_MAX", 2**63 - 1),
    ("1.5", 1.5),
    ("0.1", 0.1),
    ("-0.0", -0.0),
    ("1e100", 1e100),
    ("1.5e-7", 1.5e-7),
    ("NAN", math.nan),
    ("INF", math.inf),
    ("-INF", -math.inf),
    ('""', ""),
    ('"Hello.  This is the shared memory segment."', "Hello.  This is the shared memory segment."),
    ('"h\\u{e9}llo \\u{2713}"', "héllo ✓"),
    ('"\\x00\\xff\\xfe binary"', b"\x00\xff\xfe binary"),
    ("[1, 2, 3]", [1, 2, 3]),
    (
        '["x" => 1, 5 => "five", "nested" => [true, [null, 2.5]]]',
        {"x": 1, 5: "five", "nested": [True, [None, 2.5]]},
    ),
    ('[1 => "one", 0 => "zero"]', {1: "one", 0: "zero"}),
]


def same(a: Any, b: Any) -> bool:
    """Equality that treats NaN as equal to NaN and tells -0.0 from 0.0."""
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def php(code: str, *args: str) -> str:
    done = run_php("<?php " + textwrap.dedent(code), *args)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


PHP_VALUES = "[" + ", ".join(literal for literal, _ in VALUES) + "]"


@pytest.fixture
def php_key(key: int) -> Any:
    """A test key whose segment and semaphore set are gone when the test ends."""
    php_binary()
    yield key
    for option in ("-M", "-S"):
        subprocess.run(["ipcrm", option, hex(key)], capture_output=True, check=False)


def test_python_writes_php_reads(php_key: int) -> None:
    seg = shmfs.attach(php_key, 64 * 1024, 0o600, backend="sysv", codec="php")
    try:
        for index, (_, value) in enumerate(VALUES):
            seg[index] = value
        out = php(
            f"""
            $shm = shm_attach({php_key});
            foreach ({PHP_VALUES} as $i => $expected) {{
                $got = shm_get_var($shm, $i);
                $same = serialize($got) === serialize($expected);
                echo $i, $same ? " ok" : " BAD ".serialize($got), "\\n";
            }}
            """
        )
        assert out.split("\n")[:-1] == [f"{i} ok" for i in range(len(VALUES))], out
    finally:
        seg.destroy()


def test_php_writes_python_reads(php_key: int) -> None:
    php(
        f"""
        $shm = shm_attach({php_key}, 65536, 0600);
        foreach ({PHP_VALUES} as $i => $value) shm_put_var($shm, $i, $value);
        """
    )
    seg = shmfs.attach(php_key, backend="sysv")
    try:
        assert seg.size == 65536
        for index, (literal, value) in enumerate(VALUES):
            assert same(seg[index], value), f"{literal}: {seg[index]!r}"
        assert list(seg) == list(range(len(VALUES)))
    finally:
        seg.destroy()


ARTICLE = """
// The article's program, fixed: its switch lacked "break"s, it never removed the segment on
// "delete", and it took the key as a string. The key comes from argv[4] so tests can pick one.
if (count($argv) < 2) {
    echo "Usage: php shared_memory.php <send|get|delete> <integer identifier> <value>\\n";
    exit(1);
}
$key = isset($argv[4]) ? (int)$argv[4] : 987654;
$segment = shm_attach($key, 1024, 0666);
switch ($argv[1]) {
    case "send":
        shm_put_var($segment, (int)$argv[2], $argv[3]);
        echo "Message sent to shared memory segment.\\n";
        break;
    case "get":
        $data = shm_get_var($segment, (int)$argv[2]);
        echo "Received data: {$data}\\n";
        break;
    case "delete":
        shm_remove($segment);
        echo "Shared memory segment released.\\n";
        break;
}
"""


def shmfs_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shmfs", "--backend", "sysv", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_article_program_and_cli_interoperate(php_key: int) -> None:
    key = str(php_key)
    sent = shmfs_cli("send", "1", "Hello from Python", "--key", key)
    assert sent.returncode == 0, sent.stderr
    assert php(ARTICLE, "get", "1", "", key) == "Received data: Hello from Python\n"
    assert php(ARTICLE, "send", "2", "Hello from PHP", key).startswith("Message sent")
    got = shmfs_cli("get", "2", "--key", key)
    assert got.stdout == "Hello from PHP\n", got.stderr
    assert php(ARTICLE, "delete", "0", "", key) == "Shared memory segment released.\n"
    assert shmfs_cli("get", "1", "--key", key).returncode == 1  # gone for Python too
    assert shmfs_cli("send", "3", "again", "--key", key).returncode == 0
    assert shmfs_cli("delete", "--key", key).returncode == 0
    assert php(ARTICLE, "get", "3", "", key).startswith("Received data: \n")  # fresh, empty
    php(ARTICLE, "delete", "0", "", key)


# (op, index, PHP literal, Python value); a sequence of puts, replaces and removes.
SEQUENCE: list[tuple[str, int, str, Any]] = [
    ("put", 1, '"hello"', "hello"),
    ("put", 2, "42", 42),
    ("put", -3, '[1, "a" => true]', {0: 1, "a": True}),
    ("put", 4, "1.5", 1.5),
    ("put", 1, '"hello world, longer"', "hello world, longer"),
    ("remove", 2, "", None),
    ("put", PHP_INT_MIN := -(2**63), '"min"', "min"),
    ("put", 4, '"x"', "x"),
    ("remove", 1, "", None),
    ("put", 5, '"\\xff\\x00"', b"\xff\x00"),
]


def _raw_used(key: int) -> tuple[bytes, bytes]:
    """Segment ``key``'s bytes 0..end with chunk padding cut out, and the padding alone.

    Padding is not written by PHP (it keeps whatever bytes were there before), while shmfs
    zeroes every byte it frees and keeps a chunk's stamp in its last padding word (left out
    here); so the meaningful bytes must be identical, and the rest of our padding zero.
    """
    shmid = ipc.shmget(key, 0, 0)
    attachment = ipc.Attachment(shmid, ipc.shm_stat(shmid).size, readonly=True)
    try:
        view = attachment.view
        header = php_layout.read_header(view)
        meaningful, padding = [bytes(view[: header.start])], []
        pos = header.start
        while pos < header.end:
            length = int.from_bytes(view[pos + 8 : pos + 16], "little")
            step = int.from_bytes(view[pos + 16 : pos + 24], "little")
            data_end = pos + php_layout.CHUNK_HEADER_SIZE + length
            meaningful.append(bytes(view[pos:data_end]))
            padding.append(bytes(view[data_end : pos + step - 8]))
            pos += step
        return b"".join(meaningful), b"".join(padding)
    finally:
        attachment.detach()


def test_same_operations_leave_byte_identical_segments(php_key: int) -> None:
    php_side = php_key + 1
    steps = []
    for op, index, literal, _ in SEQUENCE:
        index_literal = "PHP_INT_MIN" if index == PHP_INT_MIN else str(index)
        steps.append(
            f"shm_put_var($shm, {index_literal}, {literal});"
            if op == "put"
            else f"shm_remove_var($shm, {index_literal});"
        )
    php(f"$shm = shm_attach({php_side}, 1024, 0600);\n" + "\n".join(steps))
    shm = shm_attach(php_key, 1024, 0o600)
    assert shm is not False
    try:
        for op, index, _, value in SEQUENCE:
            assert shm_put_var(shm, index, value) if op == "put" else shm_remove_var(shm, index)
        (ours, our_padding), (theirs, _) = _raw_used(php_key), _raw_used(php_side)
        assert ours == theirs
        assert set(our_padding) <= {0}
    finally:
        shm_remove(shm)
        subprocess.run(["ipcrm", "-M", hex(php_side)], capture_output=True, check=False)


PHP_INCREMENTER = """
$key = (int)$argv[1];
$times = (int)$argv[2];
$sem = sem_get($key);
$shm = shm_attach($key);
for ($i = 0; $i < $times; $i++) {
    sem_acquire($sem);
    $value = shm_get_var($shm, 1);
    shm_put_var($shm, 1, $value + 1);
    sem_release($sem);
}
echo "done\\n";
"""


def incr_python(key: int, times: int) -> int:
    with shmfs.attach(key, backend="sysv", codec="php") as seg:
        for _ in range(times):
            seg.incr(1)
    return times


def test_php_and_python_writers_exclude_each_other(php_key: int, spawn_ctx: Any) -> None:
    times = 300
    seg = shmfs.attach(php_key, 4096, 0o600, backend="sysv", codec="php")
    seg[1] = 0
    script = "<?php " + PHP_INCREMENTER
    php_runs = [
        subprocess.Popen(
            [php_binary(), "-r", script.removeprefix("<?php"), "--", str(php_key), str(times)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    children = Children(spawn_ctx)
    try:
        for _ in range(2):
            children.start(incr_python, php_key, times)
        assert children.results(120) == [times, times]
        for run in php_runs:
            out, err = run.communicate(timeout=120)
            assert run.returncode == 0 and out == b"done\n", err
        assert seg[1] == 4 * times
        assert php(f"echo shm_get_var(shm_attach({php_key}), 1);") == str(4 * times)
    finally:
        children.stop()
        for run in php_runs:
            run.kill()
            run.wait()
        seg.destroy()


def write_strings_forever(key: int, started: Any) -> None:
    """Rewrite index 1 with strings of changing length, and index 2 after it, until killed."""
    with shmfs.attach(key, backend="sysv", codec="php") as seg:
        length = 1
        while True:
            seg[1] = "x" * length
            seg[2] = length
            started.set()
            length = length * 7 % 5003 + 1


def test_php_reads_a_segment_whose_python_writer_was_killed(php_key: int) -> None:
    """A killed writer's half-done change is undone by the next locker (the journal past PHP's
    ``total``), after which PHP reads a whole value."""
    ctx = multiprocessing.get_context("fork")
    seg = shmfs.attach(php_key, 64 * 1024, 0o600, backend="sysv", codec="php")
    try:
        for _ in range(20):
            started = ctx.Event()
            writer = ctx.Process(target=write_strings_forever, args=(php_key, started))
            writer.start()
            assert started.wait(30)
            time.sleep(random.uniform(0, 0.003))  # a random instant in the write loop
            os.kill(writer.pid, signal.SIGKILL)
            writer.join(30)
            with seg.lock(timeout=5):  # takes the dead writer's semaphore back, undoes its change
                value = seg[1]
            assert isinstance(value, str) and set(value) == {"x"}
            out = php(
                f"$v = shm_get_var(shm_attach({php_key}), 1);"
                "echo strlen($v), ' ', $v === str_repeat('x', strlen($v)) ? 'whole' : 'torn';"
            )
            assert out == f"{len(value)} whole"
    finally:
        seg.destroy()


def test_remembered_offsets_follow_php_moving_chunks(php_key: int) -> None:
    """Offsets remembered from Python's reads must not survive PHP moving the chunks: a
    replacing shm_put_var moves its chunk to the end (with equal sizes, the header's words stay
    as they were), shm_remove_var closes the gap."""
    seg = shmfs.attach(php_key, 64 * 1024, 0o600, backend="sysv", codec="php")
    try:
        expected: dict[int, Any] = {i: f"value {i} " + "x" * (i * 7 % 50) for i in range(20)}
        for index, value in expected.items():
            seg[index] = value
        assert {i: seg[i] for i in expected} == expected  # every offset remembered
        php(
            f"""
            $sem = sem_get({php_key});
            $shm = shm_attach({php_key});
            sem_acquire($sem);
            shm_put_var($shm, 3, strtoupper(shm_get_var($shm, 3)));  // same size: moves only
            shm_put_var($shm, 0, "zero, longer than before");
            shm_remove_var($shm, 7);
            shm_put_var($shm, 25, [1, 2]);
            shm_put_var($shm, 12, shm_get_var($shm, 12));  // the same bytes, moved
            sem_release($sem);
            """
        )
        expected[3] = expected[3].upper()
        expected[0] = "zero, longer than before"
        del expected[7]
        expected[25] = [1, 2]
        expected[12] = expected.pop(12)  # last in the chain now
        for index in range(30):
            assert seg.get(index, None) == expected.get(index), index
        # Python's writes on top of PHP's order, read back by PHP.
        seg[5] = "five"
        expected[5] = "five"
        del seg[13]
        del expected[13]
        out = php(
            f"""
            $shm = shm_attach({php_key});
            for ($i = 0; $i < 30; $i++) {{
                if (shm_has_var($shm, $i)) echo $i, "=", serialize(shm_get_var($shm, $i)), "\\n";
            }}
            """
        )
        theirs = dict(line.split("=", 1) for line in out.splitlines())
        assert theirs == {str(i): shmfs.phpserial.dumps(v).decode() for i, v in expected.items()}
        assert sorted(seg) == sorted(expected)
    finally:
        seg.destroy()


def test_a_value_that_looks_like_a_chunk_header_is_not_taken_for_one(php_key: int) -> None:
    """After PHP moves index 1's chunk to the end, the offset Python remembered for index 2
    lies inside index 1's data, where a header for index 2 (length, next and data all
    plausible) waits: Python must still find the real index 2."""
    prefix = b's:300:"'  # PHP's serialize() of a 300-byte string starts so
    size_1 = php_layout.chunk_size(len(prefix) + 300 + 2)
    size_2 = php_layout.chunk_size(len(b"i:7;"))
    inside = size_1 - size_2 - php_layout.CHUNK_HEADER_SIZE  # offset in 1's data, after the move
    fake = struct.pack("<qqq", 2, 6, php_layout.chunk_size(6)) + b"i:666;"
    raw = bytearray(300)
    raw[0] = 0xFF  # not UTF-8: PHP's string comes back as bytes
    raw[inside - len(prefix) : inside - len(prefix) + len(fake)] = fake
    seg = shmfs.attach(php_key, 4096, 0o600, backend="sysv", codec="php")
    try:
        seg[1] = bytes(raw)
        seg[2] = 7
        assert seg[2] == 7  # index 2's offset remembered: right after index 1's chunk
        php(
            f"""
            $sem = sem_get({php_key});
            $shm = shm_attach({php_key});
            sem_acquire($sem);
            shm_put_var($shm, 1, shm_get_var($shm, 1));
            sem_release($sem);
            """
        )
        moved = _view(php_key)
        assert php_layout.find(moved, php_layout.read_header(moved), 2) == 40
        remembered = 40 + size_1
        assert moved[remembered : remembered + len(fake)] == fake  # the decoy is in place
        assert seg[2] == 7
        assert seg[1] == bytes(raw)
        seg[2] = 8  # a put must find the real chunk too, and leave one
        assert php(f"echo shm_get_var(shm_attach({php_key}), 2);") == "8"
        assert php_layout.indices(_view(php_key)) == [1, 2]
    finally:
        seg.destroy()


def _view(key: int) -> memoryview:
    """A private copy of segment ``key``'s bytes."""
    shmid = ipc.shmget(key, 0, 0)
    attachment = ipc.Attachment(shmid, ipc.shm_stat(shmid).size, readonly=True)
    try:
        return memoryview(bytearray(attachment.view))
    finally:
        attachment.detach()


PHP_CHANGES = """
$key = (int)$argv[1];
$ops = json_decode($argv[2], true);
$sem = sem_get($key);
$shm = shm_attach($key);
sem_acquire($sem);
foreach ($ops as [$op, $index, $value]) {
    if ($op === "put") shm_put_var($shm, $index, $value);
    else shm_remove_var($shm, $index);
}
sem_release($sem);
"""


def _php_round(rng: random.Random, expected: dict[int, str]) -> list[tuple[str, int, str]]:
    """A few changes of the kinds that leave the header's words as they were: a replace with
    a value of the same size (the chunk only moves), a remove and an add of the same size, a
    replace of the last chunk, as well as plain ones."""
    ops: list[tuple[str, int, str]] = []
    present = sorted(expected)
    kind = rng.choice(["same-size", "same-bytes", "swap", "last", "grow", "remove", "add"])
    index = rng.choice(present)
    if kind == "same-size":
        ops.append(("put", index, expected[index].swapcase()))
    elif kind == "same-bytes":
        ops.append(("put", index, expected[index]))
    elif kind == "swap":  # the chain's length and end as before, a new index in it
        new = max(present) + 1
        ops += [("del", index, ""), ("put", new, expected[index].upper())]
    elif kind == "last":
        last = present[-1] if rng.random() < 0.5 else index
        ops += [("put", last, "L" * len(expected[last]))]
    elif kind == "grow":
        ops.append(("put", index, expected[index] + "+" * rng.randrange(1, 30)))
    elif kind == "remove":
        ops.append(("del", index, ""))
    else:
        ops.append(("put", max(present) + 1, "added " + "y" * rng.randrange(80)))
    for op, at, value in ops:
        if op == "put":
            expected[at] = value
        else:
            del expected[at]
    return ops


def test_php_changes_between_two_python_reads_are_always_seen(php_key: int) -> None:
    """Real PHP replaces, removes and adds variables (with the sizes that keep the header's
    words unchanged among them) between Python's reads of every variable: Python always reads
    what PHP left, never a remembered place's stale bytes."""
    rng = random.Random(php_key)
    seg = shmfs.attach(php_key, 1 << 16, 0o600, backend="sysv", codec="php")
    expected = {index: f"value {index} " + "v" * rng.randrange(60) for index in range(60)}
    try:
        for index, value in expected.items():
            seg[index] = value
        script = "<?php " + PHP_CHANGES
        for _ in range(40):
            assert {index: seg.get(index, None) for index in range(max(expected) + 2)} == {
                index: expected.get(index) for index in range(max(expected) + 2)
            }
            ops = _php_round(rng, expected)
            done = run_php(script, str(php_key), json.dumps(ops))
            assert done.returncode == 0, done.stderr.decode()
            for index in rng.sample(sorted(expected), 3):  # one get first, then all
                assert seg[index] == expected[index]
        assert sorted(seg) == sorted(expected)
    finally:
        seg.destroy()


def test_a_php_change_beside_a_python_replace_is_still_seen(php_key: int) -> None:
    """A replace of a remembered variable proves its own chunk (and the chunk index's copy
    there), not the whole chain. PHP removing one variable and adding another of the same
    chunk size after it leaves the header's words as they were; after Python's replace the
    added variable must still be found and the removed one missed, by Python and PHP."""
    seg = shmfs.attach(php_key, 1 << 15, 0o600, backend="sysv")  # pickle frames: C's put
    try:
        hot = seg._backend.hot  # type: ignore[union-attr]
        for index in range(10):
            seg[index] = f"value {index}"
        assert all(seg[index] == f"value {index}" for index in range(10))
        view = _view(php_key)
        header = php_layout.read_header(view)
        at = php_layout.find(view, header, 5)
        length = php_layout.chunk_at(php_layout.word_view(view), header, at)[1]
        step = php_layout.chunk_size(length)
        text = "a" * 10
        while php_layout.chunk_size(len(phpserial.dumps(text))) < step:
            text += "a"
        assert php_layout.chunk_size(len(phpserial.dumps(text))) == step
        php(
            f"""
            $sem = sem_get({php_key});
            $shm = shm_attach({php_key});
            sem_acquire($sem);
            shm_remove_var($shm, 5);
            shm_put_var($shm, 20, "{text}");
            sem_release($sem);
            """
        )
        assert php_layout.read_header(_view(php_key)) == header  # end and free as they were
        if hot is not None:
            assert hot.put(2, 1, "value 2, replaced") is None  # the C put took it
        else:
            seg[2] = "value 2, replaced"
        assert seg.get(20, None) == text
        assert seg.get(5, None) is None
        seg[30] = "added after"
        expected = {i: f"value {i}" for i in range(10) if i != 5}
        expected |= {2: "value 2, replaced", 20: text, 30: "added after"}
        assert {index: seg.get(index, None) for index in range(31)} == {
            index: expected.get(index) for index in range(31)
        }
        out = php(f"$shm = shm_attach({php_key}); echo shm_get_var($shm, 20);")
        assert out == text
        assert sorted(php_layout.indices(_view(php_key))) == sorted(expected)
    finally:
        seg.destroy()
