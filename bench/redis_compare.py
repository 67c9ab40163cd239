"""``python -m bench.redis_compare``: what shmfs costs on top of redis-py, in one process run.

Starts a redis-server on a unix socket in a temporary directory, then times, against it and
through one connection pool per client: raw redis-py ``GET``/``SET``/``INCR`` of the bytes shmfs
stores, and shmfs-on-redis ``get``/``put``/``incr`` (each one script call; an ``incr`` reads
nothing first once its handle knows the version). Batches of every operation are interleaved,
round by round in a fresh random order, so a noisy neighbour moves them all alike. Then how soon
a waiter in this process sees a put made in another one. Prints the target rows of
:func:`bench.targets.redis_rows` with their verdicts.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import shmfs
from bench import redis_mixed, wakeup
from bench.redis_server import RedisServer, ServerError
from bench.targets import redis_crowd_rows, redis_rows
from bench.timing import Stats, bracket_ns, to_us

KEY = redis_mixed.KEY
VALUE = "x" * 100  # a small value: what a counter, a flag or a progress record costs


def interleaved(
    calls: dict[str, Callable[[], object]], batch: int, batches: int
) -> dict[str, Stats]:
    """Time each call ``batch * batches`` times, one batch of each per round, in random order."""
    for call in calls.values():  # warm connections, scripts and caches
        for _ in range(min(batch, 200)):
            call()
    bracket = bracket_ns(2000)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    now = time.perf_counter_ns
    for _ in range(batches):
        random.shuffle(order)
        for name in order:
            call, raw = calls[name], [0] * batch
            for k in range(batch):
                start = now()
                call()
                raw[k] = now() - start
            samples[name].extend(to_us(raw, bracket))
    return {name: Stats.of(values) for name, values in samples.items()}


def contended(server: RedisServer, processes: int, seconds: float) -> dict[str, dict[str, Any]]:
    """``processes`` processes of mixed get/put/incr on shared variables, raw redis-py and then
    shmfs, twice each in turn: operations per second and put latencies of each."""
    ctx = multiprocessing.get_context("spawn")
    totals: dict[str, dict[str, Any]] = {
        kind: {"ops": 0, "seconds": 0.0, "puts": []} for kind in ("raw", "shmfs")
    }
    with ctx.Pool(processes) as pool:
        for kind in ("raw", "shmfs", "raw", "shmfs"):
            start_at = time.time() + 2.0  # time for every worker to be ready
            args = (kind, server.url, server.socket, seconds / 2, start_at)
            for result in pool.starmap(redis_mixed.mixed, [args] * processes):
                totals[kind]["ops"] += result["ops"]
                totals[kind]["puts"].extend(result["puts"])
            totals[kind]["seconds"] += seconds / 2
    return {
        kind: {"rate": t["ops"] / t["seconds"], "put": Stats.of(t["puts"])}
        for kind, t in totals.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_compare")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=15)
    parser.add_argument("--wakeups", type=int, default=300)
    parser.add_argument(
        "--processes", type=int, default=8, help="processes of the mixed case (0: skip it)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each mixed run")
    args = parser.parse_args()
    try:
        import redis  # noqa: PLC0415  # the peer: reported, not a traceback, when absent
    except ImportError:
        print("bench.redis_compare: needs the redis package (pip install redis)", file=sys.stderr)
        return 2
    directory = tempfile.mkdtemp(prefix="shmfs-redis-")
    try:
        server = RedisServer.start(directory)  # on a unix socket only, saving nothing
    except ServerError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        print(f"bench.redis_compare: {exc}", file=sys.stderr)
        return 2
    raw = redis.Redis(unix_socket_path=server.socket)
    seg: shmfs.Segment | None = None
    try:
        seg = shmfs.attach(KEY, 1 << 20, backend="redis", root=server.url)
        seg[1] = VALUE
        seg[2] = 0
        seg[3] = VALUE
        frame = raw.hget(f"shmfs:{{{KEY}}}:vars", "1")  # the exact bytes shmfs stores
        assert isinstance(frame, bytes)
        raw.set("raw", frame)
        raw.set("counter", 0)
        stats = interleaved(
            {
                "GET": lambda: raw.get("raw"),
                "SET": lambda: raw.set("raw", frame),
                "INCR": lambda: raw.incr("counter"),
                "get": lambda: seg.get(1),
                "put": lambda: seg.put(1, VALUE),
                "incr": lambda: seg.incr(2),
            },
            args.batch,
            args.batches,
        )
        crowd = contended(server, args.processes, args.seconds) if args.processes > 0 else None
        # The wake-up writer child attaches by it; set for this run only.
        os.environ["SHMFS_REDIS_URL"] = server.url
        wake = wakeup.measure("redis", args.wakeups)
    except shmfs.ShmfsError as exc:
        print(f"bench.redis_compare: {exc}", file=sys.stderr)
        return 1
    finally:
        os.environ.pop("SHMFS_REDIS_URL", None)
        if seg is not None:
            seg.destroy()
        raw.close()
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    load = os.getloadavg()[0]
    print(
        f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores,"
        f" load average {load:.1f} at the end"
    )
    print(f"Python {platform.python_version()}, a {len(frame)}-byte frame ({len(VALUE)}-char str)")
    print(f"{'operation':<14} {'median us':>10} {'p99 us':>8}")
    for name, label in (
        ("GET", "redis-py GET"),
        ("SET", "redis-py SET"),
        ("INCR", "redis-py INCR"),
        ("get", "shmfs get"),
        ("put", "shmfs put"),
        ("incr", "shmfs incr"),
    ):
        print(f"{label:<14} {stats[name].median:>10.1f} {stats[name].p99:>8.1f}")
    ours = {op: stats[op] for op in ("get", "put", "incr")}
    theirs = {command: stats[command] for command in ("GET", "SET", "INCR")}
    rows = redis_rows(ours, theirs, "same server, same socket")
    if crowd is not None:
        rows += redis_crowd_rows(crowd["shmfs"], crowd["raw"], args.processes, args.seconds)
    for row in rows:
        print(f"{row.verdict:>4}  {row.target}: {row.measured}")
    print(
        f"wake-up (another process's put -> watch): p50 {wake['p50_us']:.0f} us, "
        f"p99 {wake['p99_us']:.0f} us, max {wake['max_us']:.0f} us; an idle waiter uses "
        f"{wake['idle_cpu_s_per_2s']:.3f} s CPU per 2 s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
