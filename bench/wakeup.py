"""``python -m bench.wakeup``: how soon a waiter sees a put made in another process.

A child writes a timestamp and then a value, each time the parent asks; the parent watches the
value and takes the difference on arrival (CLOCK_MONOTONIC is system-wide, so the two processes'
readings compare). Prints p50/p99 in microseconds, and the CPU a waiter idle for 2 s uses.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import statistics
import time
import uuid
from typing import Any

import shmfs

KEY = 0x5EB1


def _writer(backend: str, root: str | None, go: Any, rounds: int) -> None:
    with shmfs.attach(KEY, 1 << 20, backend=backend, root=root) as seg:
        for index in range(rounds):
            if not go.get(timeout=30):
                return
            seg[2] = time.monotonic()
            seg[1] = index


def measure(backend: str, rounds: int) -> dict[str, float]:
    root = None
    if backend == "tmpfs":
        root = f"/dev/shm/shmfs-wakeup-{uuid.uuid4().hex}"
        os.mkdir(root, 0o700)
    seg = shmfs.attach(KEY, 1 << 20, backend=backend, root=root)
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Queue()
    child = ctx.Process(target=_writer, args=(backend, root, go, rounds))
    child.start()
    latencies = []
    try:
        seg[1] = -1
        with seg.watch(1, timeout=30) as values:
            for _ in range(rounds):
                go.put(True)
                next(values)
                latencies.append((time.monotonic() - seg[2]) * 1e6)
        began = time.process_time()
        with contextlib.suppress(shmfs.WaitTimeout):
            seg.wait(1, timeout=2.0)
        idle_cpu = time.process_time() - began
    finally:
        go.put(False)
        child.join(30)
        seg.destroy()
        if root:
            shutil.rmtree(root, ignore_errors=True)
    latencies.sort()
    return {
        "p50_us": statistics.median(latencies),
        "p99_us": latencies[int(len(latencies) * 0.99) - 1],
        "max_us": latencies[-1],
        "idle_cpu_s_per_2s": idle_cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.wakeup")
    parser.add_argument("--rounds", type=int, default=500)
    args = parser.parse_args()
    for backend in ("tmpfs", "sysv"):
        result = measure(backend, args.rounds)
        print(
            f"{backend:6} wake-up p50 {result['p50_us']:7.0f} us  p99 {result['p99_us']:7.0f} us"
            f"  max {result['max_us']:7.0f} us  idle waiter CPU {result['idle_cpu_s_per_2s']:.3f}"
            " s per 2 s"
        )


if __name__ == "__main__":
    main()
