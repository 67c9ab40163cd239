"""``python -m bench.cache``: shmfs.Cache against diskcache.Cache (on /dev/shm), in one run.

Both caches get the same keys and values, interleaved round by round, so a noisy machine moves
both; reported are medians and the ratios the cache issue sets targets for (hit <= 3 us, get
>= 5x and set >= 10x faster than diskcache).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid

import shmfs
from bench.timing import Timing, measure

VALUE = {"user": 42, "name": "alice", "roles": ["admin", "dev"]}


def main() -> None:
    root = f"/dev/shm/shmfs-bench-cache-{uuid.uuid4().hex}"
    os.mkdir(root, 0o700)
    ours = shmfs.Cache(0x5EB2, 64 << 20, root=root)
    try:
        import diskcache  # type: ignore[import-untyped]  # noqa: PLC0415  # an optional peer
    except ImportError:
        diskcache = None
    theirs_dir = tempfile.mkdtemp(dir="/dev/shm", prefix="diskcache-bench-")
    theirs = diskcache.Cache(theirs_dir) if diskcache else None
    try:
        ours.set("key", VALUE)
        results: dict[str, Timing] = {
            "shmfs get": measure(lambda: ours.get("key")),
            "shmfs set": measure(lambda: ours.set("key", VALUE)),
        }
        if theirs is not None:
            theirs.set("key", VALUE)
            results["diskcache get"] = measure(lambda: theirs.get("key"))
            results["diskcache set"] = measure(lambda: theirs.set("key", VALUE))
        for name, timing in results.items():
            print(f"{name:14} {timing.median:8.2f} us  (p99 {timing.p99:.2f})")
        if theirs is not None:
            for op in ("get", "set"):
                ratio = results[f"diskcache {op}"].median / results[f"shmfs {op}"].median
                print(f"shmfs is {ratio:.1f}x faster than diskcache on {op}")
        else:
            print("diskcache: not installed (pip install diskcache)")
    finally:
        ours.destroy()
        shutil.rmtree(root, ignore_errors=True)
        if theirs is not None:
            theirs.close()
        shutil.rmtree(theirs_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
