"""Real processes on one segment: exact counts, no torn reads, SIGKILLed writers.

Children are started with ``spawn`` (a clean interpreter, as an unrelated process would be) or,
for the many short-lived writers of the kill test, ``forkserver`` with shmfs preloaded: a clean
start too, without paying an interpreter start per round. Ordering is by Event handshakes; every
wait has a ceiling. The one random sleep picks *when* to kill, never the order of events.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from typing import Any

import pytest

import shmfs
from tests.conftest import segment_ref
from tests.workers import (
    Children,
    checked_value,
    churn_small,
    hold_lock,
    hold_lock_forever,
    incr_many,
    is_intact,
    read_while,
    rmw_many,
    write_count,
    write_forever,
    write_small,
)

WAIT = 60


@pytest.fixture(scope="module")
def forkserver() -> Any:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["shmfs", "tests.workers"])
    return ctx


def test_concurrent_incr_is_exact(seg: shmfs.Segment, spawn_ctx: Any) -> None:
    start = spawn_ctx.Event()
    children = Children(spawn_ctx)
    try:
        for _ in range(6):
            children.start(incr_many, segment_ref(seg), 1, 500, start)
        start.set()
        pids = children.results(WAIT)
    finally:
        children.stop()
    assert len(set(pids)) == 6
    assert seg[1] == 3000


@pytest.mark.parametrize("kind", ["update", "cas", "lock"])
def test_read_modify_writes_are_exact(seg: shmfs.Segment, spawn_ctx: Any, kind: str) -> None:
    seg[1] = 0
    start = spawn_ctx.Event()
    children = Children(spawn_ctx)
    try:
        for _ in range(4):
            children.start(rmw_many, segment_ref(seg), kind, 150, start)
        start.set()
        assert children.results(WAIT) == [150] * 4
    finally:
        children.stop()
    assert seg[1] == 600


def test_stopped_holder_makes_waiters_time_out_naming_it(
    seg: shmfs.Segment, spawn_ctx: Any
) -> None:
    held = spawn_ctx.Event()
    holder = spawn_ctx.Process(target=hold_lock_forever, args=(segment_ref(seg), held))
    holder.start()
    try:
        assert held.wait(WAIT)
        os.kill(holder.pid, signal.SIGSTOP)  # alive but frozen: the kernel keeps its lock
        with pytest.raises(shmfs.LockTimeout) as info:
            seg.lock(timeout=0.3).__enter__()
        assert info.value.holder_pid == holder.pid
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(WAIT)
    with seg.lock(timeout=5):
        pass


def _reads_during_writes(
    spawn_ctx: Any, ref: dict[str, Any], unmapped: tuple[bool, ...], writer: Any, *args: Any
) -> list[dict[str, int]]:
    """Start one ``read_while`` reader per ``unmapped`` flag, run ``writer(ref, 1, *args,
    started)`` until it returns 3000, stop the readers and return their counts."""
    stop, started = spawn_ctx.Event(), spawn_ctx.Event()
    readies = [spawn_ctx.Event() for _ in unmapped]
    children = Children(spawn_ctx)
    try:
        for ready, flag in zip(readies, unmapped, strict=True):
            children.start(read_while, ref, 1, stop, ready, flag)
        for ready in readies:
            assert ready.wait(WAIT)
        writers = Children(spawn_ctx)
        writers.start(writer, ref, 1, 3000, started, *args)
        try:
            assert writers.results(WAIT) == [3000]
        finally:
            stop.set()
            writers.stop()
        return list(children.results(WAIT))
    finally:
        stop.set()
        children.stop()


def test_readers_never_see_torn_or_older_values(seg: shmfs.Segment, spawn_ctx: Any) -> None:
    counts = _reads_during_writes(spawn_ctx, segment_ref(seg), (False, False), write_count)
    for count in counts:
        assert count["bad"] == 0, counts
        assert count["backwards"] == 0, counts
    assert sum(count["intact"] for count in counts) > 100, counts
    assert is_intact(seg[1]) and seg[1]["seq"] == 3000


class TestWithoutMappings:
    """tmpfs past its mapping limit: readers copy with pread, writers may use pwrite."""

    @pytest.fixture
    def backend(self, tmpfs_backend: str) -> str:
        return tmpfs_backend

    @pytest.mark.parametrize("writer", ["mapped", "pwrite"])
    def test_pread_readers_never_see_torn_or_older_values(
        self, seg: shmfs.Segment, spawn_ctx: Any, writer: str
    ) -> None:
        """The seqlock holds without mappings: a reader copying with pread and one reading its
        mapping, during 3000 puts in place by a writer writing through its mapping or with
        pwrite."""
        seg[1] = checked_value(0, 9000)  # the file every put then writes in place
        counts = _reads_during_writes(
            spawn_ctx, segment_ref(seg), (True, False), write_small, writer == "pwrite"
        )
        for count in counts:
            assert count["bad"] == count["backwards"] == count["missing"] == 0, counts
            assert count["intact"] > 50, counts
        assert sorted(count["mapped"] for count in counts) == [0, 1], counts  # pread, mapped


def leftovers(location: str) -> list[str]:
    """A tmpfs segment's temporary files (a System V segment has none to leave)."""
    return [name for name in os.listdir(location) if name.startswith(".tmp-")]


def _kill_writer_rounds(seg: shmfs.Segment, ctx: Any, rounds: int) -> dict[str, int]:
    ref = segment_ref(seg)
    location = seg.stats()["location"]
    seen = {"old": 0, "new": 0}
    last_seq = -1
    for round_no in range(rounds):
        started = ctx.Event()
        first = (round_no + 1) * 1_000_000
        writer = ctx.Process(target=write_forever, args=(ref, 1, first, started))
        writer.start()
        try:
            assert started.wait(WAIT), "writer never started"
            time.sleep(random.uniform(0, 0.004))  # a random instant in the write loop
        finally:
            os.kill(writer.pid, signal.SIGKILL)
            writer.join(WAIT)
        assert writer.exitcode == -signal.SIGKILL
        with seg.lock(timeout=5):  # free at once: the kernel dropped the dead holder's flock
            value = seg[1]
            litter = leftovers(location) if seg.backend == "tmpfs" else []
        assert is_intact(value), f"round {round_no}: torn value"
        assert value["seq"] >= first > last_seq
        seen["new" if value["seq"] > first else "old"] += 1
        last_seq = value["seq"]
        assert litter == [], f"round {round_no}: dead writer's files left: {litter}"
        assert seg.stats()["variables"] in (1, 2)
    return seen


def test_sigkilled_writers_leave_old_or_new_value(seg: shmfs.Segment, forkserver: Any) -> None:
    seen = _kill_writer_rounds(seg, forkserver, 50)
    assert sum(seen.values()) == 50


@pytest.mark.stress
def test_sigkilled_writers_stress(seg: shmfs.Segment, forkserver: Any) -> None:
    seen = _kill_writer_rounds(seg, forkserver, 500)
    assert sum(seen.values()) == 500


def test_lock_timeout_names_the_holder(seg: shmfs.Segment, spawn_ctx: Any) -> None:
    held, release = spawn_ctx.Event(), spawn_ctx.Event()
    holder = spawn_ctx.Process(target=hold_lock, args=(segment_ref(seg), held, release))
    holder.start()
    try:
        assert held.wait(WAIT)
        began = time.monotonic()
        with pytest.raises(shmfs.LockTimeout) as info, seg.lock(timeout=0.2):
            pass
        assert time.monotonic() - began >= 0.2
        assert info.value.holder_pid == holder.pid
        assert str(holder.pid) in str(info.value)
        assert isinstance(info.value, TimeoutError)
        timed = shmfs.attach(seg.key, backend=seg.backend, root=seg._spec["root"], lock_timeout=0.1)
        with timed, pytest.raises(shmfs.LockTimeout):
            timed[1] = "blocked"
    finally:
        release.set()
        holder.join(WAIT)
    assert 1 not in seg  # (a System V read takes the lock: only now is it free)
    seg[1] = "free again"


def test_lock_of_a_killed_holder_is_free_at_once(seg: shmfs.Segment, spawn_ctx: Any) -> None:
    held = spawn_ctx.Event()
    holder = spawn_ctx.Process(target=hold_lock_forever, args=(segment_ref(seg), held))
    holder.start()
    try:
        assert held.wait(WAIT)
        with pytest.raises(shmfs.LockTimeout):
            seg.lock(timeout=0.05).__enter__()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(WAIT)
    began = time.monotonic()
    with seg.lock(timeout=5):
        pass
    assert time.monotonic() - began < 1


# ------------------------------------------------ tmpfs slots and the index, killed


def _small_churn_rounds(
    seg: shmfs.Segment, ctx: Any, rounds: int, *, broken: bool = False
) -> tuple[int, int]:
    """Kill a writer that inserts (growing the index), replaces and removes small values at a
    random instant, ``rounds`` times; after each, check what a SIGKILL must leave. Returns how
    many variables the last round left, and the index generation (how often it grew)."""
    ref = segment_ref(seg)
    location = seg.stats()["location"]
    previous: dict[int, Any] = {}
    gen = 0
    for round_no in range(rounds):
        started = ctx.Event()
        first = (round_no + 1) * 1_000_000
        writer = ctx.Process(target=churn_small, args=(ref, first, started, broken))
        writer.start()
        try:
            assert started.wait(WAIT), "writer never started"
            time.sleep(random.uniform(0, 0.004))  # a random instant in the write loop
        finally:
            os.kill(writer.pid, signal.SIGKILL)
            writer.join(WAIT)
        assert writer.exitcode == -signal.SIGKILL
        reader = shmfs.attach(seg.key, backend="tmpfs", root=ref["root"])
        try:
            # Free at once: the kernel dropped the dead holder's flock; this repairs.
            with reader.lock(timeout=1):
                indices = list(reader)
                values = {index: reader[index] for index in indices}
                count = len(reader)
            assert count == len(indices) == reader.stats()["variables"], f"round {round_no}"
        finally:
            reader.detach()
        lost = sorted(set(previous) - set(values))  # the writer removes only its own
        assert not lost, f"round {round_no}: lost {lost[:5]}"
        for index, value in values.items():
            assert is_intact(value) and value["index"] == index, f"round {round_no}: torn"
            if value != previous.get(index):  # not the old value: a new one, of this writer
                assert value["seq"] >= first, f"round {round_no}: index {index} went back"
        previous = values
        with open(os.path.join(location, ".segment"), "rb") as meta:
            gen = int.from_bytes(meta.read()[8 * 14 : 8 * 15], "little")  # M_INDEX_GEN
        names = os.listdir(location)
        litter = [name for name in names if name.startswith(".tmp-")]
        indexes = [name for name in names if name.startswith(".index-")]
        assert litter == [], f"round {round_no}: dead writer's files left: {litter}"
        assert indexes == [f".index-{gen}"], f"round {round_no}: {indexes}"
        assert all(name.startswith(".") for name in names), "a small value got a file"
    return len(previous), gen


@pytest.fixture
def small_churn_seg(tmpfs_backend: str, root: str, key: int) -> Any:
    """A 32 MiB tmpfs segment (with the C fast path and without), destroyed afterwards."""
    seg = shmfs.attach(key, 32 << 20, backend=tmpfs_backend, root=root)
    try:
        yield seg
    finally:
        seg.destroy()


def test_sigkilled_small_writers_leave_whole_slots_and_index(
    small_churn_seg: shmfs.Segment, forkserver: Any
) -> None:
    """Inserts (the index grows), replacements and removals of values in slots, SIGKILLed at
    random: every variable is whole (old or new), the lock is free at once, the count matches
    the indices, and no temporary file or old index file is left after the repair."""
    left, grown = _small_churn_rounds(small_churn_seg, forkserver, 50)
    assert left > 0 and grown > 0, (left, grown)


def test_the_kill_rounds_catch_a_writer_that_frees_before_it_publishes(
    root: str, key: int, forkserver: Any
) -> None:
    """The negative control: the same rounds, against a writer that frees a variable's old slot
    before the index names the new one, fail (a variable is lost or torn)."""
    seg = shmfs.attach(key, 32 << 20, root=root)
    try:
        with pytest.raises(AssertionError, match=r"lost|torn|went back"):
            _small_churn_rounds(seg, forkserver, 30, broken=True)
    finally:
        seg.destroy()


@pytest.mark.stress
def test_sigkilled_small_writers_stress(small_churn_seg: shmfs.Segment, forkserver: Any) -> None:
    _small_churn_rounds(small_churn_seg, forkserver, 400)
