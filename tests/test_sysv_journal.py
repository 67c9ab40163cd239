"""sysv only: the journal past PHP's area. A segment is its size plus 4 KiB, a writer killed at
any instant leaves old or new values for Python and PHP, and no removed or replaced value is left
anywhere in the segment's memory (the journal's included) once a call returns."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

import shmfs
from shmfs.backends.sysv import ipc
from shmfs.backends.sysv import journal as journal_module
from shmfs.backends.sysv.journal import CAPACITY, OVERHEAD
from tests.phpbin import php_binary, run_php
from tests.sysv_workers import TAIL, replace_forever

pytestmark = pytest.mark.usefixtures("sysv_paths")  # both paths: C and pure Python


@pytest.fixture
def sysv_key(key: int) -> Iterator[int]:
    """A test key whose segment and semaphore set are gone when the test ends."""
    yield key
    for option in ("-M", "-S"):
        subprocess.run(["ipcrm", option, hex(key)], capture_output=True, check=False)


def _kernel_size(key: int) -> int:
    return ipc.shm_stat(ipc.shmget(key, 0, 0)).size


def _whole_segment(key: int) -> bytes:
    """Every byte the kernel holds for segment ``key``, through an attachment of our own."""
    shmid = ipc.shmget(key, 0, 0)
    attachment = ipc.Attachment(shmid, ipc.shm_stat(shmid).size, readonly=True)
    try:
        return bytes(attachment.view)
    finally:
        attachment.detach()


@pytest.mark.parametrize("size", [72, 1000, 10000, 10001, 65536, 1 << 20])
def test_a_segment_is_its_size_plus_a_fixed_overhead(sysv_key: int, size: int) -> None:
    seg = shmfs.attach(sysv_key, size, backend="sysv")
    try:
        assert seg.size == seg.stats()["size"] == size
        assert _kernel_size(sysv_key) == size + OVERHEAD <= size + 4096
    finally:
        seg.destroy()


MARKER = b"MARKER-5f3a9c"


def _marked(length: int) -> bytes:
    return (MARKER * (length // len(MARKER) + 1))[:length]


@pytest.mark.parametrize(
    "length",
    [
        20,  # a chunk under 128 bytes: the tail moves through the buffer
        CAPACITY // 2,  # steps of the chunk's size, straight from the segment
        CAPACITY + 500,  # a chunk bigger than the buffer
        5 * CAPACITY,
    ],
)
@pytest.mark.parametrize("change", ["remove", "replace", "replace-squeezed", "remove-last"])
def test_no_removed_or_replaced_value_survives_in_the_segment(
    sysv_key: int, length: int, change: str
) -> None:
    """An observer maps the whole segment (past PHP's area too) and searches for the marker."""
    tail = 3 * CAPACITY if change != "remove-last" else 0
    size = 40 + 64 + length + tail + 200 + (0 if change == "replace-squeezed" else length + 64)
    seg = shmfs.attach(sysv_key, size, backend="sysv", codec="raw")
    try:
        seg[1] = b"head"
        seg[2] = _marked(length)
        if tail:
            seg[3] = bytes(range(256)) * (tail // 256)  # moved down over the marker
        assert MARKER in _whole_segment(sysv_key)
        if change.startswith("remove"):
            del seg[2]
        else:
            seg[2] = b"n" * length  # squeezed: fits only once the old value is gone
        image = _whole_segment(sysv_key)
        assert MARKER not in image
        assert seg.get(2, None) == (None if change.startswith("remove") else b"n" * length)
        if tail:
            assert seg[3] == bytes(range(256)) * (tail // 256)
    finally:
        seg.destroy()


def _check_round(key: int, seg: shmfs.Segment) -> str | None:
    """After a kill: take the lock (which finishes or undoes the dead writer's change) and
    say what is wrong, if anything, as Python sees it."""
    try:
        with seg.lock(timeout=5):
            first = seg.get(1, None)
            tail = {index: seg.get(index, None) for index in TAIL}
    except shmfs.ShmfsError as exc:  # damage, or a value cut short
        return f"{type(exc).__name__}: {exc}"
    if not isinstance(first, str) or not first or set(first) != {"x"}:
        return f"index 1 is {first!r:.40}"
    if tail[39] is None:  # the writer removes and re-adds it: killed in between
        del tail[39]
    if tail != {index: TAIL[index] for index in tail}:
        wrong = [index for index in tail if tail[index] != TAIL[index]]
        return f"indices {wrong} wrong"
    return None


def _php_reads(key: int) -> str:
    code = f"""<?php
    $sem = sem_get({key});
    sem_acquire($sem);
    $shm = shm_attach({key});
    $v = shm_get_var($shm, 1);
    $ok = is_string($v) && $v === str_repeat("x", strlen($v));
    for ($i = 2; $i < 40; $i++) {{
        if ($i === 39 && !shm_has_var($shm, 39)) continue;  // removed and re-added: killed between
        $t = shm_get_var($shm, $i);
        $ok = $ok && is_string($t) && strlen($t) === 900 + 291 * $i;
    }}
    sem_release($sem);
    echo $ok ? "whole" : "torn";
    """
    done = run_php(code)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def _kill_rounds(
    key: int,
    rounds: int,
    *,
    journalled: bool,
    php_every: int,
    codec: str = "php",
    until_torn: bool = False,
) -> list[str]:
    """Start a writer, kill it at a random instant, check; ``rounds`` times (``until_torn``:
    or until one round goes wrong). Returns what went wrong in each round that went wrong (a
    broken segment is made afresh)."""
    ctx = multiprocessing.get_context("fork")  # hundreds of children: a spawn each is too slow
    problems = []
    seg = shmfs.attach(key, 1 << 19, 0o600, backend="sysv", codec=codec)
    try:
        for round_no in range(rounds):
            if seg.get(1, None) is None:
                seg[1] = "x"
                for index, value in TAIL.items():
                    seg[index] = value
            elif seg.get(39, None) is None:
                seg[39] = TAIL[39]
            started = ctx.Event()
            writer = ctx.Process(target=replace_forever, args=(key, started, journalled, codec))
            writer.start()
            try:
                assert started.wait(30)
                time.sleep(random.uniform(0, 0.004))  # a random instant in the write loop
                os.kill(writer.pid, signal.SIGKILL)  # type: ignore[arg-type]  # started
            finally:
                writer.join(30)
            problem = _check_round(key, seg)
            if problem is None and php_every and round_no % php_every == 0:
                read = _php_reads(key)
                problem = None if read == "whole" else f"PHP read {read}"
            if problem is not None:
                problems.append(problem)
                if until_torn:
                    break
                seg.destroy()
                seg = shmfs.attach(key, 1 << 19, 0o600, backend="sysv", codec=codec)
    finally:
        seg.destroy()
    return problems


@pytest.mark.php
@pytest.mark.timeout(600)
def test_a_writer_killed_mid_compaction_leaves_old_or_new(sysv_key: int) -> None:
    """300 writers killed at random instants while they compact a 260 KiB tail: after each,
    Python (every round) and PHP (every fifth) read whole values."""
    php_binary()
    assert _kill_rounds(sysv_key, 300, journalled=True, php_every=5) == []


@pytest.mark.timeout(600)
def test_a_framed_writer_killed_mid_compaction_leaves_old_or_new(sysv_key: int) -> None:
    """The same with pickled values, whose puts take the C fast path where it is built."""
    assert _kill_rounds(sysv_key, 200, journalled=True, php_every=0, codec="pickle") == []


@pytest.mark.php
@pytest.mark.timeout(600)
def test_negative_control_without_the_journal_kills_tear_the_segment(sysv_key: int) -> None:
    """The same rounds with changes made as PHP makes them: some kills must tear the segment,
    or the test above could not tell a journal from none."""
    php_binary()
    problems = _kill_rounds(sysv_key, 400, journalled=False, php_every=1, until_torn=True)
    assert problems, "no kill tore an unjournalled segment: the kill test proves nothing"


def test_an_interrupted_append_is_undone_and_an_interrupted_cut_finished(sysv_key: int) -> None:
    """The journal's two recoveries, driven by hand: the words a writer killed there leaves
    are resolved by the next acquire."""
    seg = shmfs.attach(sysv_key, 1 << 16, backend="sysv", codec="raw")
    try:
        seg[1] = b"a" * 5000
        seg[2] = b"b" * 9000
        backend: Any = seg._backend
        journal, words = backend._journal, backend._words
        # A cut killed before its first step: recorded, nothing moved yet.
        fields = {
            journal_module._C_POS: 40,
            journal_module._C_OLD: words[(40 >> 3) + 2],  # index 1's chunk, first in the chain
            journal_module._C_END: words[2],
            journal_module._C_FREE: words[3],
            journal_module._DONE: 0,
            journal_module._SAVED: -1,
            journal_module._STATE: journal_module._CUT,
        }
        for field, value in fields.items():
            journal._set(field, value)
        with seg.lock():
            pass  # the acquire finishes the cut
        assert seg.get(1, None) is None and seg[2] == b"b" * 9000
        assert b"a" * 64 not in _whole_segment(sysv_key)
        # An append killed after it published the header: undone.
        end, free = words[2], words[3]
        seg[3] = b"c" * 100
        fields = {
            journal_module._A_END: end,
            journal_module._A_FREE: free,
            journal_module._A_NEED: words[2] - end,
            journal_module._STATE: journal_module._APPEND,
        }
        for field, value in fields.items():
            journal._set(field, value)
        with seg.lock():
            pass
        assert seg.get(3, None) is None and seg[2] == b"b" * 9000
        assert (words[2], words[3]) == (end, free)
        assert b"c" * 64 not in _whole_segment(sysv_key)
    finally:
        seg.destroy()


def test_a_cut_killed_copying_from_the_buffer_is_finished_from_it(sysv_key: int) -> None:
    """A writer that cut a chunk through the buffer (one under the direct size, or any chunk
    by a writer that buffered more) and died copying the buffer to its place left the step's
    source overwritten: the recovery copies that step from the buffer, whatever size the
    chunk is, then cuts the rest."""
    seg = shmfs.attach(sysv_key, 1 << 16, backend="sysv", codec="raw")
    try:
        seg[1] = b"a" * 300  # a chunk of at least 128 bytes: this version cuts it directly
        seg[2] = bytes(range(256)) * 40
        backend: Any = seg._backend
        journal, words, buf = backend._journal, backend._words, backend._buf
        pos, old, end = 40, words[(40 >> 3) + 2], words[2]
        step = min(CAPACITY, end - pos - old)
        buffer = journal.offset + journal_module._BUFFER
        buf[buffer : buffer + step] = buf[pos + old : pos + old + step]  # the step's source ...
        buf[pos : pos + 1000] = buf[buffer : buffer + 1000]  # ... a third copied, over itself
        fields = {
            journal_module._C_POS: pos,
            journal_module._C_OLD: old,
            journal_module._C_END: end,
            journal_module._C_FREE: words[3],
            journal_module._DONE: 0,
            journal_module._SAVED: 0,  # the buffer holds step 0's source
            journal_module._STATE: journal_module._CUT,
        }
        for field, value in fields.items():
            journal._set(field, value)
        with seg.lock():
            pass  # the acquire finishes the cut
        assert seg.get(1, None) is None
        assert seg[2] == bytes(range(256)) * 40
        assert b"a" * 64 not in _whole_segment(sysv_key)
    finally:
        seg.destroy()
