"""Cases with several processes: a writer with readers, and N writers incrementing one
variable. Processes start with ``spawn`` and begin together at a Barrier."""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import shmfs


def _writer(ref: dict[str, Any], go: Any, seconds: float, results: Any) -> None:
    with shmfs.attach(ref["key"], backend=ref["backend"], root=ref["root"]) as seg:
        value = "x" * 100
        go.wait(60)
        count, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(100):
                seg[1] = value
            count += 100
    results.put(("put", count / seconds))


def _reader(ref: dict[str, Any], go: Any, seconds: float, results: Any) -> None:
    with shmfs.attach(ref["key"], backend=ref["backend"], root=ref["root"]) as seg:
        go.wait(60)
        count, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(100):
                seg.get(1)
            count += 100
    results.put(("get", count / seconds))


def _incrementer(ref: dict[str, Any], go: Any, times: int, results: Any) -> None:
    with shmfs.attach(ref["key"], backend=ref["backend"], root=ref["root"]) as seg:
        go.wait(60)
        for _ in range(times):
            seg.incr(2)
    results.put(("incr", times))


def writer_and_readers(ref: dict[str, Any], readers: int, seconds: float) -> dict[str, float]:
    """Puts/s of one writer and total gets/s of ``readers`` readers, all at once."""
    ctx = multiprocessing.get_context("spawn")
    go, results = ctx.Barrier(readers + 2), ctx.Queue()  # every child attached, then all start
    with shmfs.attach(ref["key"], backend=ref["backend"], root=ref["root"]) as seg:
        seg[1] = "x" * 100
    procs = [ctx.Process(target=_writer, args=(ref, go, seconds, results))]
    procs += [ctx.Process(target=_reader, args=(ref, go, seconds, results)) for _ in range(readers)]
    for proc in procs:
        proc.start()
    go.wait(60)
    totals = {"put": 0.0, "get": 0.0}
    for _ in procs:
        kind, rate = results.get(timeout=seconds + 60)
        totals[kind] += rate
    for proc in procs:
        proc.join(30)
    return totals


def contended_incr(ref: dict[str, Any], workers: int, times: int) -> dict[str, float]:
    """Total incr/s of ``workers`` processes on one variable, and whether the count is exact."""
    ctx = multiprocessing.get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    with shmfs.attach(ref["key"], backend=ref["backend"], root=ref["root"]) as seg:
        seg[2] = 0
    procs = [
        ctx.Process(target=_incrementer, args=(ref, go, times, results)) for _ in range(workers)
    ]
    for proc in procs:
        proc.start()
    time.sleep(1.0)
    began = time.monotonic()
    go.set()
    for _ in procs:
        results.get(timeout=600)
    elapsed = time.monotonic() - began
    for proc in procs:
        proc.join(30)
    with shmfs.attach(ref["key"], backend=ref["backend"], root=ref["root"]) as seg:
        exact = seg[2] == workers * times
    return {"incr_per_s": workers * times / elapsed, "exact": float(exact)}
