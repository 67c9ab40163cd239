"""Scale: shmfs tmpfs, lmdb and diskcache from 10 to 1,000,000 variables, on one tmpfs.

What a cache of many small entries costs: the average put while filling (each a transaction of
its own), a get of every variable once in random order, and the bytes of tmpfs per variable
(``st_blocks`` of every file, plus the kernel's inode and dentry for each file). Then three cases
shmfs alone must pass: Docker's default 64 MiB ``/dev/shm`` filled with 100-byte variables,
a churn of puts, replacements and removals of mixed sizes, and ``shmfs.Cache`` with 200,000 string
keys against diskcache. Every figure is from this run; the targets compare within it.

Beside shmfs's curve, at each size, the machine's own cold-read floor (``bench/coldread.py``): a
random byte of a mapping as large as the segment's files, through the same loop. A get among a
million misses cache and TLB twice (index bucket, then slot); the floor says what one miss costs
here, so the "random get <= 3x a get among 10" row can say how much of its ratio is the machine's.

``python -m bench.scale [--variables N] [--repeat R]`` runs the curve's rows alone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import shmfs
from bench import quickrows, targets
from bench.cases import kernel_bytes_per_file
from bench.coldread import ColdRead
from bench.peers import FACTORIES
from bench.scratch import Scratch
from bench.system import System, Unavailable, bytes_on_disk, import_peer

__all__ = [
    "SCALE_SYSTEMS",
    "cache_compare",
    "churn",
    "cold_floor",
    "docker_fill",
    "scale_curve",
    "value",
]

TMPFS = "shmfs tmpfs"
SCALE_SYSTEMS = (TMPFS, "lmdb", "diskcache")
Progress = Callable[[str], None]


def value(index: int) -> str:
    """The 100-character str stored at ``index``: distinct, so a wrong variable shows."""
    return f"{index:012d}".ljust(100, "v")


def _per_call(call: Callable[[Any], object], items: list[Any] | range) -> float:
    """µs per ``call(item)``, over all of ``items`` in one timed loop."""
    began = time.perf_counter()
    for item in items:
        call(item)
    return (time.perf_counter() - began) / max(len(items), 1) * 1e6


def scale_curve(
    scratch: Scratch,
    sizes: tuple[int, ...],
    progress: Progress,
    *,
    systems: tuple[str, ...] = SCALE_SYSTEMS,
) -> dict[str, Any]:
    """``{"results": {system: {N: {"put", "get", "bytes"}}}, "get10": {system: µs}}``: put µs
    averaged over filling up to N, random-order get µs with N stored, tmpfs bytes per variable."""
    per_file = kernel_bytes_per_file() or 0
    results: dict[str, dict[int, dict[str, float]]] = {}
    get10: dict[str, float] = {}
    unavailable: dict[str, str] = {}
    for name in systems:
        try:
            system = FACTORIES[name](scratch)
        except Unavailable as exc:
            unavailable[name] = str(exc)
            continue
        try:
            floor = scratch.shm_path("cold-read") if name == TMPFS else None
            results[name] = _grow(system, sizes, per_file, get10, progress, floor)
        finally:
            system.close()
    return {"results": results, "get10": get10, "unavailable": unavailable}


def _grow(
    system: System,
    sizes: tuple[int, ...],
    per_file: int,
    get10: dict[str, float],
    progress: Progress,
    floor_path: str | None = None,
) -> dict[int, dict[str, float]]:
    """The curve of one system; with ``floor_path``, at each size also the machine's cold-read
    floor (``bench/coldread.py``) over as many bytes as the system's files hold."""
    get, put = system.ops.get, system.ops.put
    rng = random.Random(7)
    curve: dict[int, dict[str, float]] = {}
    stored = 0
    for size in sizes:
        put_us = _per_call(lambda index: put(index, value(index)), range(stored, size))
        stored = size
        order = list(range(size))
        rng.shuffle(order)
        get_us = _per_call(get, order)
        if size == 10:  # every variable read many times: the get among 10
            get10[system.name] = _per_call(get, list(range(10)) * 20_000)
        footprint = system.footprint()
        per_variable = (
            (footprint.bytes + footprint.files * per_file) / size if footprint else float("nan")
        )
        curve[size] = {"put": put_us, "get": get_us, "bytes": per_variable}
        if floor_path is not None and footprint is not None:
            curve[size].update(cold_floor(f"{floor_path}-{size}", footprint.bytes, size))
            progress(
                f"cold-read floor, {footprint.bytes / 2**20:,.0f} MiB: a random byte "
                f"{curve[size]['floor_cold']:.2f} µs, one of 10 {curve[size]['floor_hot']:.2f} µs"
            )
        progress(
            f"scale {system.name:12} {size:>9,}: put {put_us:6.2f} µs, random get "
            f"{get_us:6.2f} µs, {per_variable:8,.0f} B/variable"
        )
    return curve


def cold_floor(path: str, nbytes: int, count: int) -> dict[str, float]:
    """µs per random single-byte read of an ``nbytes`` mapping, ``count`` of them
    (``floor_cold``), and per read of one of 10 offsets over and over (``floor_hot``): timed as
    the gets are, in the same loop."""
    floor = ColdRead(path, nbytes)
    try:
        offsets = floor.offsets(count, seed=count)
        return {
            "floor_cold": _per_call(floor.read, offsets),
            "floor_hot": _per_call(floor.read, offsets[:10] * 20_000),
        }
    finally:
        floor.close()


@contextlib.contextmanager
def _small_tmpfs(size: str) -> Iterator[str]:
    """A private tmpfs of ``size`` (as ``docker run`` gives ``/dev/shm``); needs root."""
    where = tempfile.mkdtemp(prefix="shmfs-bench-tmpfs-")
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", where],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        os.rmdir(where)
        raise Unavailable(f"cannot mount a tmpfs here (root needed): {exc}") from exc
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", where], check=False, capture_output=True)
        os.rmdir(where)


def docker_fill(progress: Progress) -> dict[str, Any]:
    """100-byte variables stored on a 64 MiB tmpfs until SegmentFull; then every one read."""
    try:
        with _small_tmpfs("64m") as where:
            seg = shmfs.attach(0x5EC00001, size=1 << 40, root=os.path.join(where, "root"))
            count = 0
            try:
                while True:
                    seg[count] = value(count)
                    count += 1
            except shmfs.SegmentFull as exc:
                full = str(exc).split(";")[0]
            wrong = sum(1 for index in range(count) if seg[index] != value(index))
            seg.destroy()
    except Unavailable as exc:
        return {"error": str(exc)}
    progress(f"64 MiB tmpfs: {count:,} variables, then SegmentFull; {wrong} read back wrong")
    return {"variables": count, "wrong": wrong, "full": full, "error": None}


def churn(
    scratch: Scratch, progress: Progress, *, variables: int, operations: int
) -> dict[str, Any]:
    """``operations`` random puts, replacements and removals over ``variables`` variables of
    mixed sizes (mostly small, some past a page): tmpfs bytes before and after, values checked."""
    root = scratch.shm_path("churn")
    seg = shmfs.attach(0x5EC00002, size=1 << 40, root=root)
    rng = random.Random(11)
    sizes = (10, 40, 100, 100, 100, 300, 1000, 3000, 6000)
    model: dict[int, str] = {}

    def put(index: int) -> None:
        model[index] = f"{index}:{rng.random()}".ljust(rng.choice(sizes), "c")
        seg[index] = model[index]

    try:
        for index in range(variables):
            put(index)
        before = bytes_on_disk(root).bytes
        began = time.perf_counter()
        for _ in range(operations):
            index = rng.randrange(variables)
            if rng.random() < 0.2 and index in model:
                del model[index]
                del seg[index]
            else:
                put(index)
        seconds = time.perf_counter() - began
        after = bytes_on_disk(root).bytes
        wrong = sum(1 for index, stored in model.items() if seg.get(index) != stored)
        wrong += len(seg) - len(model)
    finally:
        seg.destroy()
        shutil.rmtree(root, ignore_errors=True)
    progress(
        f"churn: {operations:,} operations over {variables:,} variables in {seconds:.1f} s; "
        f"{before / 2**20:.1f} MiB before, {after / 2**20:.1f} MiB after; {wrong} wrong"
    )
    return {"before": before, "after": after, "wrong": wrong, "seconds": seconds}


def cache_compare(scratch: Scratch, progress: Progress, *, keys: int) -> dict[str, Any]:
    """``shmfs.Cache`` and ``diskcache.Cache`` with ``keys`` str keys, set and got in random
    order: µs per call and tmpfs bytes per entry."""
    names = [f"user:{n}:profile" for n in range(keys)]
    rng = random.Random(5)
    results: dict[str, dict[str, float]] = {}
    root = scratch.shm_path("cache")
    ours = shmfs.Cache("bench-scale", size=1 << 34, root=root)
    try:
        results["shmfs.Cache"] = _cache_rounds(ours.set, ours.get, names, rng, root)
    finally:
        ours.close()
        shutil.rmtree(root, ignore_errors=True)
    try:
        diskcache = import_peer("diskcache", "pip install diskcache")
    except Unavailable as exc:
        return {"results": results, "unavailable": {"diskcache": str(exc)}}
    where = scratch.shm_path("diskcache-scale")
    theirs = diskcache.Cache(where)
    try:
        results["diskcache"] = _cache_rounds(theirs.set, theirs.get, names, rng, where)
    finally:
        theirs.close()
        shutil.rmtree(where, ignore_errors=True)
    for name, figures in results.items():
        progress(
            f"cache {name:12} {keys:,} keys: get {figures['get']:.2f} µs, set "
            f"{figures['set']:.2f} µs, {figures['bytes']:,.0f} B/entry"
        )
    return {"results": results, "unavailable": {}}


def _cache_rounds(
    set_: Callable[[str, Any], object],
    get: Callable[[str], Any],
    names: list[str],
    rng: random.Random,
    where: str,
) -> dict[str, float]:
    order = names[:]
    rng.shuffle(order)
    set_us = _per_call(lambda name: set_(name, value(len(name))), order)
    rng.shuffle(order)
    get_us = _per_call(get, order)
    footprint = bytes_on_disk(where)
    per_file = kernel_bytes_per_file() or 0
    return {
        "set": set_us,
        "get": get_us,
        "bytes": (footprint.bytes + footprint.files * per_file) / len(names),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.scale [--variables N] [--repeat R] [--point]``: the scale curve's rows
    alone (shmfs tmpfs and lmdb filled to N, each read once in random order, a get among 10, and
    the machine's cold-read floor), R times, then the median of each ratio; ``--point`` adds two
    rows of the main bench's (``bench/quickrows.py``)."""
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=main.__doc__)
    parser.add_argument("--variables", type=int, default=1_000_000, help="fill to this many")
    parser.add_argument("--repeat", type=int, default=1, help="runs, each in a fresh store")
    parser.add_argument("--no-lmdb", action="store_true", help="shmfs alone (no put/get ratio)")
    parser.add_argument(
        "--point",
        action="store_true",
        help="also the 1 MiB get against memcpy, and a get among 100,000 against one among 10",
    )
    args = parser.parse_args(argv)

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    systems = (TMPFS,) if args.no_lmdb else (TMPFS, "lmdb")
    ratios: dict[str, list[str]] = {}
    with Scratch() as scratch:
        for _ in range(args.repeat):
            curve = scale_curve(scratch, (10, args.variables), progress, systems=systems)
            rows = targets.curve_rows(curve)
            if args.point:
                rows += [quickrows.bytes1m_row(scratch), quickrows.among_row(scratch, 100_000)]
            for row in rows:
                print(f"{row.verdict:>4}  {row.target}: {row.measured}")
                ratios.setdefault(row.target, []).append(row.measured)
    if args.repeat > 1:
        for target, measured in ratios.items():
            figures = [
                float(text.split(" = ")[1].split("x")[0]) for text in measured if " = " in text
            ]
            if figures:
                print(f"median of {len(figures)}: {statistics.median(figures):.2f}x  {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
