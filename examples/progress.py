"""A parent shows a live progress bar fed by a worker process through shmfs.

The article's readers asked what shared memory is for; the answer was a child reporting its
progress to its parent. The worker writes its progress into variable 1; the parent watches it,
waking only when the value changes (no polling), and draws the bar.

    python examples/progress.py
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time

import shmfs

KEY = 0x70726F67  # "prog"
STEPS = 40


def worker(key: int) -> None:
    """Pretend to upload a file, reporting progress after each chunk."""
    with shmfs.attach(key) as seg:
        for step in range(1, STEPS + 1):
            time.sleep(0.05)  # the work
            seg[1] = {"done": step, "total": STEPS, "pid": os.getpid()}


def main() -> int:
    seg = shmfs.attach(KEY)
    seg[1] = {"done": 0, "total": STEPS, "pid": None}
    with seg.watch(1, timeout=10) as progress:  # watching starts here: no update is missed
        child = multiprocessing.get_context("spawn").Process(target=worker, args=(KEY,))
        child.start()
        for state in progress:
            filled = state["done"] * 30 // state["total"]
            sys.stdout.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {state['done']}/{STEPS}")
            sys.stdout.flush()
            if state["done"] == state["total"]:
                break
    child.join()
    print(f"\nworker {state['pid']} finished")
    seg.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
