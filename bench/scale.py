"""Scale: shmfs tmpfs, lmdb and diskcache from 10 to 1,000,000 variables, on one tmpfs.

What a cache of many small entries costs: the average put while filling (each a transaction of
its own), a get of every variable once in random order, and the bytes of tmpfs per variable
(``st_blocks`` of every file, plus the kernel's inode and dentry for each file). Then three cases
shmfs alone must pass: Docker's default 64 MiB ``/dev/shm`` filled with 100-byte variables,
a churn of puts, replacements and removals of mixed sizes, and ``shmfs.Cache`` with 200,000 string
keys against diskcache. Every figure is from this run; the targets compare within it.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import shmfs
from bench.cases import kernel_bytes_per_file
from bench.peers import FACTORIES
from bench.scratch import Scratch
from bench.system import System, Unavailable, bytes_on_disk, import_peer

__all__ = ["SCALE_SYSTEMS", "cache_compare", "churn", "docker_fill", "scale_curve", "value"]

SCALE_SYSTEMS = ("shmfs tmpfs", "lmdb", "diskcache")
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


def scale_curve(scratch: Scratch, sizes: tuple[int, ...], progress: Progress) -> dict[str, Any]:
    """``{"results": {system: {N: {"put", "get", "bytes"}}}, "get10": {system: µs}}``: put µs
    averaged over filling up to N, random-order get µs with N stored, tmpfs bytes per variable."""
    per_file = kernel_bytes_per_file() or 0
    results: dict[str, dict[int, dict[str, float]]] = {}
    get10: dict[str, float] = {}
    unavailable: dict[str, str] = {}
    for name in SCALE_SYSTEMS:
        try:
            system = FACTORIES[name](scratch)
        except Unavailable as exc:
            unavailable[name] = str(exc)
            continue
        try:
            results[name] = _grow(system, sizes, per_file, get10, progress)
        finally:
            system.close()
    return {"results": results, "get10": get10, "unavailable": unavailable}


def _grow(
    system: System,
    sizes: tuple[int, ...],
    per_file: int,
    get10: dict[str, float],
    progress: Progress,
) -> dict[int, dict[str, float]]:
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
        progress(
            f"scale {system.name:12} {size:>9,}: put {put_us:6.2f} µs, random get "
            f"{get_us:6.2f} µs, {per_variable:8,.0f} B/variable"
        )
    return curve


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
