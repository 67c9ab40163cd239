"""wait / watch and their asyncio forms, across real processes."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from typing import Any

import pytest

import shmfs
from tests.conftest import segment_ref
from tests.workers import Children, write_when_told

WAIT = 30


@pytest.fixture
def writer(seg: shmfs.Segment, spawn_ctx: Any):
    """A child process that writes ``values[k]`` each time it is told to."""
    children = Children(spawn_ctx)
    go, ack = spawn_ctx.Queue(), spawn_ctx.Queue()

    def start(values: list[Any]) -> tuple[Any, Any]:
        children.start(write_when_told, segment_ref(seg), 1, values, go, ack)
        return go, ack

    yield start
    go.put(False)
    children.stop()


def test_watch_sees_every_value_of_a_slower_writer(seg: shmfs.Segment, writer: Any) -> None:
    values = [{"step": step} for step in range(20)]
    go, _ = writer(values)
    seen = []
    watching = seg.watch(1, timeout=WAIT)
    go.put(True)
    for value in watching:
        seen.append(value)
        if len(seen) == len(values):
            break
        go.put(True)  # the writer writes the next only once we have this one
    watching.close()
    assert seen == values


def test_wait_wakes_fast_and_idles_cheaply(seg: shmfs.Segment, writer: Any) -> None:
    go, ack = writer(list(range(40)))
    latencies = []
    with seg.watch(1, timeout=WAIT) as watching:
        for expected in range(40):
            go.put(True)
            assert next(watching) == expected
            latencies.append(time.monotonic() - seg[2])
            ack.get(timeout=WAIT)
    # Loose bounds for a shared CI machine; bench/ measures the real figures.
    assert statistics.median(latencies) < 0.05, latencies
    began = time.process_time()
    with pytest.raises(shmfs.WaitTimeout):
        seg.wait(1, timeout=1.0)
    assert time.process_time() - began < 0.1  # asleep, not spinning


def test_wait_timeout(seg: shmfs.Segment) -> None:
    seg[1] = "unchanged"
    began = time.monotonic()
    with pytest.raises(shmfs.WaitTimeout) as info:
        seg.wait(1, timeout=0.2)
    assert time.monotonic() - began >= 0.2
    assert isinstance(info.value, TimeoutError)
    assert info.value.index == 1


def test_wait_returns_value_written_by_another_thread(seg: shmfs.Segment) -> None:
    seg[1] = "old"
    ready = threading.Event()

    def write() -> None:
        ready.wait(WAIT)
        seg[3] = "elsewhere"  # other variables do not end the wait
        seg[1] = "new"

    thread = threading.Thread(target=write)
    thread.start()
    try:
        watcher = seg.watch(1, timeout=WAIT)
        ready.set()
        assert next(watcher) == "new"
        watcher.close()
    finally:
        thread.join(WAIT)


def test_removal_is_not_a_value(seg: shmfs.Segment) -> None:
    seg[1] = "first"
    done = threading.Event()
    result: list[Any] = []

    def waiter() -> None:
        result.append(seg.wait(1, timeout=WAIT))
        done.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    try:
        del seg[1]
        assert not done.wait(0.3)
        seg[1] = "second"
        assert done.wait(WAIT)
    finally:
        thread.join(WAIT)
    assert result == ["second"]


def test_async_wait_and_watch(seg: shmfs.Segment, writer: Any) -> None:
    go, _ = writer(["a", "b", "c"])

    async def main() -> list[Any]:
        seen = []
        watching = seg.watch_async(1, timeout=WAIT)
        go.put(True)
        async for value in watching:
            seen.append(value)
            if len(seen) == 3:
                break
            go.put(True)
        return seen

    assert asyncio.run(main()) == ["a", "b", "c"]


def test_async_wait_returns_next_value(seg: shmfs.Segment) -> None:
    seg[1] = "old"

    async def run() -> Any:
        loop = asyncio.get_running_loop()
        waiter = loop.create_task(seg.wait_async(1, timeout=WAIT))
        await asyncio.sleep(0)  # the task runs up to its first await: registered by then
        seg[1] = "new"
        return await waiter

    assert asyncio.run(run()) == "new"


def test_async_wait_timeout(seg: shmfs.Segment) -> None:
    async def main() -> None:
        await seg.wait_async(1, timeout=0.1)

    with pytest.raises(shmfs.WaitTimeout):
        asyncio.run(main())
