"""``python -m bench.unmapped [--variables 100000]``: what a tmpfs get costs past the mappings
a handle keeps, against the system calls it cannot avoid.

A segment holds ``--variables`` 100-byte strings. Gets drawn uniformly among 10 of them (all
mapped) are timed against gets among all of them (most read with pread), and both against the
bare system calls a get of an unmapped variable makes (open, fstat, two preads, close) on the
same files in the same order: the floor any design with one file per variable pays.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import shutil
import uuid
from collections.abc import Callable

import shmfs
from bench.timing import Stats, measure
from shmfs.backends import tmpfs

KEY = 0x5EB2
_OPEN = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW


def _walker(call: Callable[[int], object], picks: list[int]) -> Callable[[], object]:
    order = itertools.cycle(picks)
    return lambda: call(next(order))


def run(variables: int) -> dict[str, Stats]:
    root = f"/dev/shm/shmfs-unmapped-{uuid.uuid4().hex}"
    os.mkdir(root, 0o700)
    try:
        seg = shmfs.attach(KEY, 256 * variables + (1 << 20), root=root)
        for index in range(variables):
            seg[index] = "x" * 100
        dir_fd = os.open(seg.stats()["location"], os.O_RDONLY | os.O_DIRECTORY)
        names = [str(index) for index in range(variables)]

        def syscalls(index: int) -> None:
            fd = os.open(names[index], _OPEN, dir_fd=dir_fd)
            os.fstat(fd)
            os.pread(fd, 4096, 0)
            os.pread(fd, 8, 32)
            os.close(fd)

        rng = random.Random(variables)
        few = [rng.randrange(10) for _ in range(4096)]
        many = [rng.randrange(variables) for _ in range(65536)]
        results = {
            "get among 10": measure(_walker(seg.get, few), batch=2000, batches=10),
            f"get among {variables:,}": measure(_walker(seg.get, many), batch=2000, batches=10),
            "system calls alone": measure(_walker(syscalls, many), batch=2000, batches=10),
        }
        os.close(dir_fd)
        seg.destroy()
        return results
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.unmapped", description=__doc__)
    parser.add_argument("--variables", type=int, default=100_000)
    args = parser.parse_args(argv)
    results = run(args.variables)
    print(f"tmpfs, {tmpfs.MAX_MAPPINGS:,} mappings per handle; µs per call, median (p99):")
    for label, stats in results.items():
        print(f"  {label:32} {stats.median:6.2f}  ({stats.p99:.2f})")
    base = results["get among 10"].median
    for label, stats in results.items():
        print(f"  {label:32} {stats.median / base:5.2f}x get among 10")


if __name__ == "__main__":
    main()
