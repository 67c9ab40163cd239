"""``python -m bench.redis_compare``: what shmfs costs on top of redis-py, in one process run.

Starts a redis-server on a unix socket in a temporary directory, then times, against it:
raw redis-py ``GET``/``SET`` of the same bytes shmfs stores, shmfs-on-redis ``get``/``put``
(a get is one round trip; a put is three: take the lock, the write script, release it), and
an ``incr``; then how soon a waiter in this process sees a put made in another one.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile

import redis

import shmfs
from bench import wakeup
from bench.redis_server import RedisServer
from bench.timing import measure

KEY = 0x5EB42
VALUE = "x" * 100  # a small value: what a counter, a flag or a progress record costs


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_compare")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=15)
    parser.add_argument("--wakeups", type=int, default=300)
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="shmfs-redis-")
    server = RedisServer.start(directory)  # on a unix socket only, saving nothing
    raw = redis.Redis(unix_socket_path=server.socket)
    seg: shmfs.Segment | None = None
    try:
        seg = shmfs.attach(KEY, 1 << 20, backend="redis", root=server.url)
        seg[1] = VALUE
        seg[2] = 0
        assert seg._backend is not None
        frame = seg._backend.read(1)  # the exact bytes shmfs stores for VALUE
        assert isinstance(frame, bytes)
        raw.set("raw", frame)
        rows = {
            "redis-py GET": measure(lambda: raw.get("raw"), batch=args.batch, batches=args.batches),
            "redis-py SET": measure(
                lambda: raw.set("raw", frame), batch=args.batch, batches=args.batches
            ),
            "shmfs get": measure(lambda: seg.get(1), batch=args.batch, batches=args.batches),
            "shmfs put": measure(lambda: seg.put(1, VALUE), batch=args.batch, batches=args.batches),
            "shmfs incr": measure(lambda: seg.incr(2), batch=args.batch, batches=args.batches),
        }
        os.environ["SHMFS_REDIS_URL"] = server.url  # the wake-up writer child attaches by it
        wake = wakeup.measure("redis", args.wakeups)
    finally:
        if seg is not None:
            seg.destroy()
        raw.close()
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    print(
        f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores,"
    )
    print(f"Python {platform.python_version()}, a {len(frame)}-byte frame ({len(VALUE)}-char str)")
    print(f"{'operation':<14} {'median us':>10} {'p99 us':>8}  vs redis-py")
    base = {"get": rows["redis-py GET"], "put": rows["redis-py SET"], "incr": rows["redis-py SET"]}
    for name, timing in rows.items():
        peer = base.get(name.split()[-1])
        ratio = f"{timing.ratio(peer):.1f}x" if name.startswith("shmfs") and peer else ""
        print(f"{name:<14} {timing.median:>10.1f} {timing.p99:>8.1f}  {ratio}")
    print(
        f"wake-up (another process's put -> watch): p50 {wake['p50_us']:.0f} us, "
        f"p99 {wake['p99_us']:.0f} us, max {wake['max_us']:.0f} us; an idle waiter uses "
        f"{wake['idle_cpu_s_per_2s']:.3f} s CPU per 2 s"
    )


if __name__ == "__main__":
    main()
