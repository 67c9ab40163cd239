"""``python -m bench.hotspots [--top N]``: where shmfs's own code spends a call's time.

cProfile over the calls the targets are about (tmpfs get/put of a 100-byte str and of 1 MiB, a
get among 20,000 variables, a sysv get among 100), printing the functions with the most time of
their own. cProfile adds its own cost to every Python call, so read shares, not absolute µs; the
bench's figures are the absolute ones.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import random
import sys
from collections.abc import Callable, Iterator

import shmfs
from bench.scratch import Scratch
from shmfs.backends import BACKENDS

__all__ = ["main"]


def _profile(label: str, call: Callable[[], object], calls: int, top: int) -> None:
    for _ in range(min(calls, 200)):  # warm up: first mappings, allocator, caches
        call()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        call()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    lines = [line for line in text.getvalue().splitlines() if line.strip()]
    print(f"## {label} ({calls:,} calls)\n")
    print("```")
    print("\n".join(line.replace(os.path.dirname(shmfs.__file__), "shmfs") for line in lines))
    print("```\n")


def _cycle(indices: list[int]) -> Iterator[int]:
    while True:
        yield from indices


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hotspots", description=__doc__)
    parser.add_argument("--top", type=int, default=12, help="functions shown per profile")
    top = parser.parse_args(argv).top
    small, big = "x" * 100, os.urandom(1 << 20)
    with Scratch() as scratch:
        root = scratch.shm_path("profile-tmpfs")
        os.mkdir(root, 0o700)
        seg = shmfs.attach(1, 1 << 30, root=root)
        try:
            seg[1], seg[2] = small, big
            _profile("tmpfs get, 100-byte str", lambda: seg.get(1), 100_000, top)
            _profile("tmpfs put, 100-byte str", lambda: seg.put(1, small), 50_000, top)
            _profile("tmpfs get, 1 MiB bytes", lambda: seg.get(2), 2_000, top)
            _profile("tmpfs put, 1 MiB bytes", lambda: seg.put(2, big), 2_000, top)
            with seg.lock():
                for index in range(20_000):
                    seg[index] = small
            picks = _cycle([random.randrange(20_000) for _ in range(50_000)])
            _profile("tmpfs get among 20,000 variables", lambda: seg.get(next(picks)), 20_000, top)
        finally:
            seg.destroy()
        if "sysv" not in BACKENDS:
            print("## sysv: not available in this shmfs\n")
            return 0
        sysv = shmfs.attach(scratch.sysv_key(), 1 << 20, backend="sysv")
        try:
            for index in range(100):
                sysv[index] = small
            picks = _cycle([random.randrange(100) for _ in range(50_000)])
            _profile("sysv get among 100 variables", lambda: sysv.get(next(picks)), 20_000, top)
        finally:
            sysv.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
