"""``python -m bench.sysv_php [--runs N] [--rounds N]``: shmfs sysv against PHP's locked calls.

The two sysv-against-PHP target rows alone, measured as the full run's fill curve measures them
(the same subjects, 100 variables of the 100-byte str, interleaved rounds with indices drawn
among them), in well under a minute. Each run makes fresh segments; the figures printed are
each run's medians and, with several runs, the median of the runs' medians, which is what the
rows are judged on.

Each run also times the lock alone inside ``php``: ``sem_acquire`` then ``sem_release``, the
two ``semop`` system calls that a locked call of PHP's and a get or put of ours both make. It is
the floor of both rows on the machine as it is during the run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from typing import Any

from bench import cases
from bench.peers import FACTORIES
from bench.php import PhpSubject
from bench.scratch import Scratch
from bench.targets import PHP_LOCKED, SYSV, Row, sysv_rows
from bench.timing import Stats, bracket_ns
from bench.values import SMALL, Picks

VARIABLES = 100

LOCK_ALONE = r"""<?php
// argv: key count; prints the median ns of sem_acquire + sem_release, its bracket removed.
$sem = sem_get((int)$argv[1], 1, 0600, true);
$count = (int)$argv[2];
$bracket = [];
$lock = [];
for ($k = 0; $k < $count; $k++) { $t = hrtime(true); $bracket[] = hrtime(true) - $t; }
for ($k = 0; $k < $count; $k++) {
    $t = hrtime(true); sem_acquire($sem); sem_release($sem); $lock[] = hrtime(true) - $t;
}
sort($bracket);
sort($lock);
sem_remove($sem);
echo json_encode(["ns" => $lock[intdiv($count, 2)] - $bracket[intdiv($count, 2)]]);
"""


def lock_alone_us(scratch: Scratch, count: int = 20_000) -> float | None:
    """PHP's ``sem_acquire`` + ``sem_release`` alone, median µs; ``None`` without php."""
    php = shutil.which("php")
    if php is None:
        return None
    script = scratch.tmp_path("lock.php")
    with open(script, "w", encoding="utf-8") as file:
        file.write(LOCK_ALONE)
    done = subprocess.run(
        [php, script, str(scratch.sysv_key()), str(count)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return float(json.loads(done.stdout)["ns"]) / 1000


def one_run(rounds: int, batch: int) -> tuple[dict[str, dict[str, Stats]], float | None]:
    """``{subject: {"get": Stats, "put": Stats}}`` for shmfs sysv and PHP + sem_acquire, and
    the lock alone in PHP (µs)."""
    with Scratch() as scratch:
        system = FACTORIES[SYSV](scratch)
        scratch.on_close(system.name, system.close)
        subjects: list[cases.Subject] = [
            cases.InProcess(system, bracket_ns()),
            PhpSubject(scratch, locked=True, size=32 << 20),
        ]
        for subject in subjects:
            subject.fill(0, VARIABLES, 30.0)
            subject.timed_round(SMALL, Picks(20, VARIABLES, seed=1))  # warm-up
        failed: dict[str, str] = {}
        counts = {subject.name: batch for subject in subjects}
        samples = cases._rounds(subjects, SMALL, counts, rounds, VARIABLES, failed, seed=VARIABLES)
        if failed:
            raise RuntimeError(f"failed: {failed}")
        floor = lock_alone_us(scratch)
        stats = {name: {op: Stats.of(v) for op, v in ops.items()} for name, ops in samples.items()}
        return stats, floor


def _median_stats(runs: list[dict[str, dict[str, Stats]]], name: str, op: str) -> Stats:
    medians = [run[name][op].median for run in runs]
    return Stats(statistics.median(medians), 0.0, statistics.fmean(medians), len(medians))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sysv_php", description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="fresh runs; rows use their median")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds per run")
    parser.add_argument("--batch", type=int, default=300, help="calls per op per round")
    args = parser.parse_args(argv)
    runs, floors = [], []
    for number in range(args.runs):
        run, floor = one_run(args.rounds, args.batch)
        runs.append(run)
        line = "  ".join(
            f"{name}: get {ops['get'].median:.2f} put {ops['put'].median:.2f} µs"
            for name, ops in run.items()
        )
        if floor is not None:
            floors.append(floor)
            line += f"  lock alone (sem_acquire + sem_release): {floor:.2f} µs"
        print(f"run {number + 1}: {line}", file=sys.stderr, flush=True)
    combined: dict[str, Any] = {
        name: {VARIABLES: {op: _median_stats(runs, name, op) for op in ("get", "put")}}
        for name in (SYSV, PHP_LOCKED)
    }
    rows: list[Row] = sysv_rows(
        {"results": combined, "unavailable": {}, "errors": {}, "stopped": {}}
    )
    for row in rows[:2]:
        mark = "met" if row.met else "NOT met"
        print(f"{row.target}: {row.measured} ({mark})")
    for op in ("get", "put"):
        ratios = [run[SYSV][op].ratio(run[PHP_LOCKED][op]) for run in runs]
        listed = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"{op}: each run's ratio {listed}; median {statistics.median(ratios):.2f}x")
    if floors:
        print(f"the lock alone, PHP's two semop calls: median {statistics.median(floors):.2f} µs")
    return 0 if all(row.met for row in rows[:2]) else 1


if __name__ == "__main__":
    sys.exit(main())
