"""``python -m bench.cache [--backend tmpfs] [--keys 10000] [--json PATH]``: shmfs.Cache against
diskcache.Cache (on /dev/shm), in one run.

Two workloads, each timed round by round for both caches alternately (so a noisy machine moves
both alike), reported as medians (and p99) of per-operation microseconds over many batches:

* one hot key: ``get`` hits, ``get`` misses, ``set`` overwriting the same key;
* a working set of ``--keys`` keys, read and overwritten in random order, which is what a cache
  shared by web workers sees: past a few hundred keys the tmpfs backend maps and unmaps a file
  per variable, and the sysv backend walks PHP's layout, so this is where the cache's real cost
  shows.

The cache's targets are checked from the same run: a hit <= 3 us, ``get`` >= 5x and
``set`` >= 10x faster than diskcache.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable
from itertools import cycle
from typing import Any

import shmfs
from bench.timing import Timing, measure

VALUE = {"user": 42, "name": "alice", "roles": ["admin", "dev"]}


def _interleaved(
    cases: dict[str, Callable[[], object]], rounds: int, **kw: int
) -> dict[str, Timing]:
    """Time every case ``rounds`` times in turn; keep each case's best round (by median), the
    same rule for both caches, so what another process does to the machine counts less."""
    best: dict[str, Timing] = {}
    for _ in range(rounds):
        for name, call in cases.items():
            timing = measure(call, **kw)
            if name not in best or timing.median < best[name].median:
                best[name] = timing
    return best


def _walker(op: Callable[[str], object], keys: list[str]) -> Callable[[], object]:
    order = cycle(random.sample(keys, len(keys)))
    return lambda: op(next(order))


def run(backend: str, nkeys: int) -> dict[str, Any]:
    root = f"/dev/shm/shmfs-bench-cache-{uuid.uuid4().hex}"
    os.mkdir(root, 0o700)
    ours = shmfs.Cache(0x5EB2, 256 << 20, root=root, backend=backend)
    try:
        import diskcache  # type: ignore[import-untyped]  # noqa: PLC0415  # an optional peer
    except ImportError:
        diskcache = None
    theirs_dir = tempfile.mkdtemp(dir="/dev/shm", prefix="diskcache-bench-")
    theirs = diskcache.Cache(theirs_dir) if diskcache else None
    keys = [f"user:{number}" for number in range(nkeys)]
    try:
        hot: dict[str, Callable[[], object]] = {
            "shmfs hit": lambda: ours.get("key"),
            "shmfs miss": lambda: ours.get("absent"),
            "shmfs set": lambda: ours.set("key", VALUE),
        }
        ours.set("key", VALUE)
        many: dict[str, Callable[[], object]] = {
            f"shmfs get, {nkeys} keys": _walker(ours.get, keys),
            f"shmfs set, {nkeys} keys": _walker(lambda key: ours.set(key, VALUE), keys),
        }
        if theirs is not None:
            theirs.set("key", VALUE)
            hot |= {
                "diskcache hit": lambda: theirs.get("key"),
                "diskcache miss": lambda: theirs.get("absent"),
                "diskcache set": lambda: theirs.set("key", VALUE),
            }
            many |= {
                f"diskcache get, {nkeys} keys": _walker(theirs.get, keys),
                f"diskcache set, {nkeys} keys": _walker(lambda key: theirs.set(key, VALUE), keys),
            }
        for key in keys:
            ours.set(key, VALUE)
            if theirs is not None:
                theirs.set(key, VALUE)
        print(f"[bench.cache] timing one hot key and {nkeys} keys ...", file=sys.stderr)
        results = _interleaved(hot, 3) | _interleaved(many, 3, batch=1000, batches=10)
    finally:
        ours.destroy()
        shutil.rmtree(root, ignore_errors=True)
        if theirs is not None:
            theirs.close()
        shutil.rmtree(theirs_dir, ignore_errors=True)
    return {"backend": backend, "keys": nkeys, "diskcache": theirs is not None, "us": results}


def report(outcome: dict[str, Any]) -> list[str]:
    results: dict[str, Timing] = outcome["us"]
    lines = [f"shmfs.Cache ({outcome['backend']}) vs diskcache on /dev/shm, us per operation:"]
    lines += [f"  {name:28} {t.median:9.2f}  (p99 {t.p99:.2f})" for name, t in results.items()]
    hit = results["shmfs hit"].median
    lines.append(f"target: hit <= 3 us: {hit:.2f} us -> {'met' if hit <= 3 else 'NOT met'}")
    if not outcome["diskcache"]:
        lines.append("diskcache: not installed (pip install diskcache): no ratios")
        return lines
    nkeys = outcome["keys"]
    for ours, theirs, target in (
        ("shmfs hit", "diskcache hit", 5),
        ("shmfs set", "diskcache set", 10),
        (f"shmfs get, {nkeys} keys", f"diskcache get, {nkeys} keys", 5),
        (f"shmfs set, {nkeys} keys", f"diskcache set, {nkeys} keys", 10),
    ):
        ratio = results[theirs].median / results[ours].median
        verdict = "met" if ratio >= target else "NOT met"
        lines.append(f"target: {ours} >= {target}x diskcache: {ratio:.1f}x -> {verdict}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cache", description=__doc__)
    parser.add_argument("--backend", default="tmpfs", choices=["tmpfs", "sysv", "redis"])
    parser.add_argument("--keys", type=int, default=10_000, help="working-set size")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    outcome = run(args.backend, args.keys)
    print(f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cpus")
    print("\n".join(report(outcome)))
    if args.json:
        data = {**outcome, "us": {n: dataclasses.asdict(t) for n, t in outcome["us"].items()}}
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2)


if __name__ == "__main__":
    main()
