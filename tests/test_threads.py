"""Threads of one process on one handle: every operation at once, right values, no hang.

The C fast path runs with the GIL held, but it calls into Python (pickling, the lock's thread
half, decoders), where other threads run; the Python path holds the segment's thread lock only
around writes. A seeded mix of every operation from eight threads must leave each thread's own
variables exactly as that thread last wrote them, every shared variable whole, and the counts
right. A watchdog dumps every thread's stack and fails the test if it hangs.
"""

from __future__ import annotations

import faulthandler
import random
import sys
import threading
from typing import Any

import pytest

import shmfs

THREADS = 8


@pytest.fixture
def backend(tmpfs_backend: str) -> str:
    """The fast path is tmpfs's: these run on tmpfs, with the C module and without it."""
    return tmpfs_backend


def _worker(seg: shmfs.Segment, number: int, rounds: int, errors: list[str]) -> dict[int, Any]:
    rng = random.Random(number)
    mine: dict[int, Any] = {}
    base = (number + 1) * 1_000_000
    for round_ in range(rounds):
        index = base + rng.randrange(64)
        shared = rng.randrange(32)
        choice = rng.random()
        value: Any = {"n": number, "r": round_, "pad": "p" * rng.choice((1, 50, 300, 3000, 6000))}
        try:
            if choice < 0.35:
                seg[index] = value
                mine[index] = value
            elif choice < 0.55:
                if seg.get(index, None) != mine.get(index):
                    errors.append(f"thread {number}: index {index} is not what it wrote")
            elif choice < 0.65:
                if index in mine:
                    del seg[index]
                    del mine[index]
            elif choice < 0.75:
                seg[shared] = value
            elif choice < 0.85:
                got = seg.get(shared, None)
                if got is not None and set(got) != {"n", "r", "pad"}:
                    errors.append(f"thread {number}: shared {shared} is not whole: {got!r}")
            elif choice < 0.9:
                seg.incr(-1)
            elif choice < 0.95:
                with seg.lock():
                    seg[index] = value
                    mine[index] = value
            elif seg.add(index, value):
                mine[index] = value
        except shmfs.ShmfsError as exc:
            errors.append(f"thread {number}: {type(exc).__name__}: {exc}")
    return mine


def _run(seg: shmfs.Segment, rounds: int) -> None:
    errors: list[str] = []
    owned: list[dict[int, Any]] = [{} for _ in range(THREADS)]

    def run(number: int) -> None:
        owned[number] = _worker(seg, number, rounds, errors)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(THREADS)]
    faulthandler.dump_traceback_later(100, exit=True, file=sys.stderr)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert not errors, errors[:10]
    increments = 0
    for number in range(THREADS):
        increments += sum(1 for draw in _choices(number, rounds) if 0.85 <= draw < 0.9)
        for index, value in owned[number].items():
            assert seg[index] == value
    assert seg.get(-1, 0) == increments
    expected = sum(len(mine) for mine in owned)
    assert len([i for i in seg if i >= 1_000_000]) == expected
    assert len(seg) == expected + len([i for i in seg if i < 1_000_000])


def _choices(number: int, rounds: int) -> list[float]:
    """The ``choice`` draws ``_worker`` made, replayed from its seed."""
    rng = random.Random(number)
    draws = []
    for _ in range(rounds):
        rng.randrange(64)
        rng.randrange(32)
        draws.append(rng.random())
        rng.choice((1, 50, 300, 3000, 6000))
    return draws


def test_eight_threads_every_operation(attach: Any, key: int) -> None:
    _run(attach(key, 64 << 20), 1500)


@pytest.mark.stress
def test_eight_threads_every_operation_long(attach: Any, key: int) -> None:
    _run(attach(key, 64 << 20), 40_000)
