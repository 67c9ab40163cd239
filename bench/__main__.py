"""``python -m bench [--quick] [--out DIR]``: shmfs against what users would pick instead.

Progress goes to stderr, the markdown report to stdout, ``results.json`` and ``results.png`` to
``--out``. Everything the run creates (files in /dev/shm and the temp dir, System V segments and
semaphores, redis-servers, child processes) is removed on the way out, on errors and Ctrl-C too.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time
from types import FrameType

from bench import batch as batch_calls
from bench import cases, environment, frameworks, report, scale, targets
from bench.scratch import Scratch


class _Progress:
    """Timestamped progress lines on stderr."""

    def __init__(self) -> None:
        self.began = time.monotonic()

    def __call__(self, message: str) -> None:
        print(
            f"[bench {time.monotonic() - self.began:6.1f}s] {message}", file=sys.stderr, flush=True
        )


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM becomes an exception, so the same finally blocks clean up as for Ctrl-C.
    del frame
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="shmfs against its peers")
    parser.add_argument(
        "--quick", action="store_true", help="fewer rounds and sizes: under a minute"
    )
    parser.add_argument(
        "--out", default="bench-results", help="directory for results.json and results.png"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    progress = _Progress()
    plan = cases.QUICK if args.quick else cases.FULL
    env = environment.describe()
    for key, value in env.items():
        progress(f"{key}: {value}")
    os.makedirs(args.out, exist_ok=True)
    scratch = Scratch()
    try:
        points = cases.point_ops(scratch, plan, progress)
        points["views"] = cases.zero_copy_views(scratch, plan, progress)
        fill = cases.fill_curve(scratch, plan, progress)
        pairs = cases.writer_readers(scratch, plan, progress)
        incr = cases.incr_contention(scratch, plan, progress)
        variables, operations = plan.churn
        scaled = {
            "curve": scale.scale_curve(scratch, plan.scale_sizes, progress),
            "docker": scale.docker_fill(progress),
            "churn": scale.churn(scratch, progress, variables=variables, operations=operations),
            "cache": scale.cache_compare(scratch, progress, keys=plan.cache_keys),
        }
        rounds, batch, batches = plan.frameworks
        through = frameworks.frameworks_compare(
            scratch, progress, rounds=rounds, batch=batch, batches=batches
        )
        batched = batch_calls.measure(scratch, progress)
    except KeyboardInterrupt:
        progress("interrupted: cleaning up")
        return 130
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        problems = scratch.close()
        signal.signal(signal.SIGINT, previous)
        for problem in problems:
            progress(f"CLEANUP PROBLEM: {problem}")
    rows = targets.evaluate(points, fill, pairs, incr) + targets.scale_rows(scaled)
    rows += targets.batch_rows(batched)
    plan_info = {"quick": args.quick, **dataclasses.asdict(plan)}
    print(report.markdown(env, plan_info, rows, points, fill, pairs, incr, scaled, through))
    json_path = os.path.join(args.out, "results.json")
    report.write_json(
        json_path,
        {
            "environment": env,
            "plan": plan_info,
            "targets": rows,
            "point_ops": points,
            "fill_curve": fill,
            "writer_readers": pairs,
            "incr_contention": incr,
            "scale": scaled,
            "frameworks": through,
            "seconds": time.monotonic() - progress.began,
        },
    )
    png_path = os.path.join(args.out, "results.png")
    why_not = report.chart(png_path, points, fill, pairs, incr, scaled)
    progress(f"wrote {json_path}" + (f"; no chart: {why_not}" if why_not else f" and {png_path}"))
    progress(f"done in {time.monotonic() - progress.began:.0f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
