"""``python -m bench [--quick]``: shmfs get/put against in-process floors, as ratios.

The floors run in the same process, interleaved with shmfs, so a noisy machine moves both:
a plain dict (the cost of Python itself) and ``pickle.dumps``/``loads`` (the cost of turning a
value into bytes, which any cross-process store pays).
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import shutil
import sys
import uuid

import shmfs
from bench.timing import Timing, measure

VALUES = {
    "str100": "x" * 100,
    "dict": {"user": 42, "name": "alice", "tags": ["a", "b"], "score": 1.5},
    "bytes4k": os.urandom(4096),
    "bytes1m": os.urandom(1 << 20),
}


def environment() -> str:
    cpu = "unknown cpu"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(
                line.split(":", 1)[1].strip() for line in info if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores; Linux {platform.release()}; "
        f"Python {platform.python_version()}; shmfs {shmfs.__version__}"
    )


def _cases(seg: shmfs.Segment, plain: dict[int, object], value: object) -> list[tuple]:
    """(op, shmfs call, dict call, pickle call) for one value."""
    data = pickle.dumps(value, 5)
    return [
        ("get", lambda: seg.get(1), lambda: plain[1], lambda: pickle.loads(data)),
        (
            "put",
            lambda: seg.put(1, value),
            lambda: plain.__setitem__(1, value),
            lambda: pickle.dumps(value, 5),
        ),
    ]


def run(quick: bool) -> list[tuple[str, str, Timing, Timing, Timing]]:
    root = f"/dev/shm/shmfs-bench-{uuid.uuid4().hex}"
    os.mkdir(root, 0o700)
    rows = []
    try:
        seg = shmfs.attach(0x5EB0, 256 << 20, root=root)
        plain: dict[int, object] = {}
        for name, value in VALUES.items():
            big = len(pickle.dumps(value)) > 100_000
            batch = (20 if big else 500) if quick else (100 if big else 2000)
            batches = 9 if quick else 25
            seg[1] = value
            plain[1] = value
            for op, shm_call, dict_call, pickle_call in _cases(seg, plain, value):
                floor = measure(dict_call, batch=batch, batches=batches)
                pick = measure(pickle_call, batch=batch, batches=batches)
                ours = measure(shm_call, batch=batch, batches=batches)
                rows.append((name, op, ours, pick, floor))
                print(f"  {name:8} {op}: {ours.median:8.2f} us", file=sys.stderr)
        seg.destroy()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter batches")
    args = parser.parse_args()
    print(f"# {environment()}")
    rows = run(args.quick)
    print("| value | op | shmfs tmpfs µs (p99) | pickle µs | dict µs | shmfs / pickle |")
    print("|---|---|---|---|---|---|")
    for name, op, ours, pick, floor in rows:
        print(
            f"| {name} | {op} | {ours.median:.2f} ({ours.p99:.2f}) | {pick.median:.2f} | "
            f"{floor.median:.3f} | {ours.ratio(pick):.1f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
