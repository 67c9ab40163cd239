"""``python -m bench.instructions [--keys 200000] [--ops 20000]``: instructions per
``Cache.get`` and ``Cache.set`` of a random key among ``--keys``, counted by callgrind.

A count of instructions is the same whatever else the machine runs, so it tells a change to the
C path apart from noise where timings on a loaded machine cannot; it does not see cache misses
(the bench's timings do). The cache is filled natively; then each operation runs in a child
under ``valgrind --tool=callgrind --toggle-collect=map_next``: only what runs inside
``map()``'s calls is counted, and the measured calls are made through ``map()``, after a warm-up
of as many calls by a plain loop (which maps the slab files and fills the key memo), with the
merges of the LRU notes left out (their number depends on the machine's load). Needs valgrind
on the ``PATH``.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import uuid

import shmfs

VALUE = {"user": 42, "name": "alice", "roles": ["admin", "dev"]}
_NAME = 0x5EB3


def _child(op: str, root: str, keys: int, ops: int) -> None:
    """Run in the child, under callgrind: the warm-up, then ``ops`` measured calls."""
    cache = shmfs.Cache(_NAME, 256 << 20, root=root)
    names = [f"user:{number}" for number in range(keys)]
    rng = random.Random(7)
    warm = [rng.choice(names) for _ in range(ops)]
    measured = [rng.choice(names) for _ in range(ops)]
    call = cache.get if op == "get" else lambda key: cache.set(key, VALUE)
    for key in warm:
        call(key)
    # The merges of the LRU notes come every 50 ms of wall time, so under valgrind how many
    # fall among the counted calls depends on the machine's load: leave them out.
    cache._recency.due = math.inf
    collections.deque(map(call, measured), maxlen=0)  # counted: inside map_next only
    cache.close()


def callgrind_total(child: list[str], *, annotate: bool = False) -> int:
    """The instructions callgrind counts inside ``map()``'s calls of ``python -m <child...>``
    (the toggle: ``map_next``); ``annotate``: print its heaviest functions too."""
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "callgrind.out")
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--toggle-collect=map_next",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                *child,
            ],
            check=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},  # str hashes place dict entries
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if annotate:
            shown = subprocess.run(
                ["callgrind_annotate", "--inclusive=no", out],
                check=True,
                capture_output=True,
                text=True,
            )
            print("\n".join(shown.stdout.splitlines()[:40]))
        with open(out, encoding="utf-8") as counts:
            total = re.search(r"^(?:summary|totals): (\d+)", counts.read(), re.MULTILINE)
        assert total is not None, "callgrind wrote no total"
        return int(total.group(1))


def _count(op: str, root: str, keys: int, ops: int) -> int:
    child = ["bench.instructions", "--child", op, root, "--keys", str(keys), "--ops", str(ops)]
    return callgrind_total(child) // ops


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--ops", type=int, default=20_000)
    parser.add_argument("--child", nargs=2, metavar=("OP", "ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child[0], args.child[1], args.keys, args.ops)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed")
    root = f"/dev/shm/shmfs-bench-instructions-{uuid.uuid4().hex}"
    os.mkdir(root, 0o700)
    try:
        cache = shmfs.Cache(_NAME, 256 << 20, root=root)
        for number in range(args.keys):
            cache.set(f"user:{number}", VALUE)
        cache.close()
        for op in ("get", "set"):
            per_op = _count(op, root, args.keys, args.ops)
            print(f"Cache.{op} of a random key among {args.keys}: {per_op:,} instructions")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
