"""``python -m bench.sysv_instructions [--ops 10000]``: instructions per sysv put, by callgrind.

A sysv segment (100 variables of the 100-byte str, the bench's fill) takes ``--ops`` puts of that
str to indices drawn uniformly among the 100, in a child under ``valgrind --tool=callgrind
--toggle-collect=map_next``: only the puts, made through ``map()``, are counted, after a warm-up
of as many by a plain loop. A count of instructions does not move with the machine's load, so it
tells a change to the C put apart from noise; it does not see cache misses (the bench's timings
do). Run it under ``unshare --ipc`` (its segment key is fixed). Needs valgrind on the ``PATH``.
"""

from __future__ import annotations

import argparse
import collections
import random
import shutil
import sys

import shmfs
from bench.instructions import callgrind_total

_KEY = 0x5EB3_0001
_VARIABLES = 100
_VALUE = "x" * 100


def _child(ops: int) -> None:
    """Run in the child, under callgrind: the fill and warm-up, then ``ops`` counted puts."""
    seg = shmfs.attach(_KEY, 32 << 20, backend="sysv")
    try:
        for index in range(_VARIABLES):
            seg.put(index, _VALUE)
        rng = random.Random(7)
        for index in [rng.randrange(_VARIABLES) for _ in range(ops)]:
            seg.put(index, _VALUE)
        measured = [rng.randrange(_VARIABLES) for _ in range(ops)]
        collections.deque(map(seg.put, measured, [_VALUE] * ops), maxlen=0)  # counted
    finally:
        seg.destroy()


def count(ops: int, *, annotate: bool = False) -> int:
    """Instructions per put; ``annotate``: print callgrind's heaviest functions too."""
    child = ["bench.sysv_instructions", "--child", "--ops", str(ops)]
    return callgrind_total(child, annotate=annotate) // ops


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sysv_instructions", description=__doc__)
    parser.add_argument("--ops", type=int, default=10_000)
    parser.add_argument("--annotate", action="store_true", help="the heaviest functions too")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.ops)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed")
    per_put = count(args.ops, annotate=args.annotate)
    print(f"sysv put among {_VARIABLES} variables of a 100-byte str: {per_put:,} instructions")


if __name__ == "__main__":
    main()
