"""Threads of one process on one handle: every operation at once, right values, no hang.

The C fast path runs with the GIL held, but it calls into Python (pickling, the lock's thread
half, decoders), where other threads run; the Python path holds the segment's thread lock only
around writes. A seeded mix of every operation from eight threads must leave each thread's own
variables exactly as that thread last wrote them, every shared variable whole, and the counts
right. A watchdog dumps every thread's stack and fails the test if it hangs.

The lifecycle stress adds ``detach()`` and ``destroy()``: in each round of handles, one of the
eight threads closes the handle, at a seeded moment, while the others are inside any
operation. They may see only the documented errors of a closed handle; what they read before
is exact; after a detach a fresh handle finds each variable as one of the writes that may have
landed; after a destroy it finds the segment empty; and the lock is free at once.
"""

from __future__ import annotations

import contextlib
import faulthandler
import random
import sys
import threading
from collections.abc import Callable, Iterator
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


# --------------------------------------------------------------------------- lifecycle stress

_ABSENT = "absent"  # what a fresh handle finds at an index holding no value
_CLOSED = (shmfs.SegmentDetached, shmfs.SegmentNotFound)


@contextlib.contextmanager
def _watchdog(seconds: float) -> Iterator[None]:
    """Dump every thread's stack and end the process if the block outlives ``seconds``."""
    faulthandler.dump_traceback_later(seconds, exit=True, file=sys.stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


class _Round:
    """One handle's life: eight threads on it, one of which closes it."""

    def __init__(self, seg: shmfs.Segment, seed: int, rounds: int) -> None:
        self.seg = seg
        rng = random.Random(seed)
        self.closer = rng.randrange(THREADS)
        self.close_at = rng.randrange(rounds)
        self.destroy = rng.random() < 0.5
        self.rounds = rounds
        self.seed = seed
        self.closing = False  # set before the close starts: a closed error may come from then
        self.errors: list[str] = []
        # index -> the values (or _ABSENT) it may hold once the round is over
        self.possible: list[dict[int, set[Any]]] = [{} for _ in range(THREADS)]

    def run(self) -> None:
        threads = [threading.Thread(target=self._worker, args=(n,)) for n in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _worker(self, number: int) -> None:
        rng = random.Random(self.seed * 1000 + number)
        possible = self.possible[number]
        confirmed: dict[int, Any] = {}  # index -> value, or _ABSENT, as last confirmed
        for round_ in range(self.rounds):
            if number == self.closer and round_ == self.close_at:
                self._close()
            index = (number + 1) * 1_000_000 + rng.randrange(16)
            value = {"n": number, "r": round_, "pad": "p" * rng.choice((1, 300, 6000))}
            try:
                self._step(rng.random(), index, value, confirmed, possible)
            except _CLOSED as exc:
                if not self.closing:
                    self.errors.append(f"thread {number}: {exc!r} before any close")
            except Exception as exc:  # any other error is the finding
                self.errors.append(f"thread {number} round {round_}: {exc!r}")

    def _close(self) -> None:
        self.closing = True
        try:
            if self.destroy:
                self.seg.destroy()
            else:
                self.seg.detach()
        except _CLOSED:
            pass

    def _step(
        self,
        choice: float,
        index: int,
        value: Any,
        confirmed: dict[int, Any],
        possible: dict[int, set[Any]],
    ) -> None:
        seg = self.seg
        key = repr(value)  # values are dicts: their reprs stand for them in sets
        if choice < 0.3:
            possible.setdefault(index, {confirmed.get(index, _ABSENT)}).add(key)
            seg[index] = value
            confirmed[index] = key
            possible[index] = {key}
        elif choice < 0.55:
            got = seg.get(index, None)
            self._check_read(index, None if got is None else repr(got), confirmed)
        elif choice < 0.62:
            if confirmed.get(index, _ABSENT) != _ABSENT:
                possible.setdefault(index, {confirmed[index]}).add(_ABSENT)
                seg.remove(index)
                confirmed[index] = _ABSENT
                possible[index] = {_ABSENT}
        elif choice < 0.7:
            possible.setdefault(index, {confirmed.get(index, _ABSENT)}).add(key)
            with seg.lock():
                seg.put(index, value)
            confirmed[index] = key
            possible[index] = {key}
        elif choice < 0.76:
            seg.incr(-1)
        elif choice < 0.82:
            with seg.view(index) if index in seg else contextlib.nullcontext() as viewed:
                if viewed is not None:
                    self._check_read(index, repr(viewed), confirmed)
        elif choice < 0.88:
            possible.setdefault(index, {confirmed.get(index, _ABSENT)}).add(key)
            seg.update(index, lambda old: value, default=None)
            confirmed[index] = key
            possible[index] = {key}
        elif choice < 0.94:
            len(seg)
            list(seg)
        else:
            seg.get(rng_shared(index), None)  # another thread's variable: whole or absent

    def _check_read(self, index: int, got: str | None, confirmed: dict[int, Any]) -> None:
        expected = confirmed.get(index, _ABSENT)
        want = None if expected == _ABSENT else expected
        if got != want and not (self.closing and self.destroy and got is None):
            self.errors.append(f"index {index}: read {got!r:.60}, last wrote {want!r:.60}")

    def check_after(self, fresh: shmfs.Segment) -> None:
        with fresh.lock(timeout=5):  # free at once
            pass
        if self.destroy:
            assert len(fresh) == 0, "a destroyed segment came back with values"
            return
        for number, table in enumerate(self.possible):
            for index, allowed in table.items():
                got = fresh.get(index, None)
                found = _ABSENT if got is None else repr(got)
                assert found in allowed, (number, index, found[:60], allowed)


def rng_shared(index: int) -> int:
    """Another thread's variable, picked from ``index`` (so from the seeded draws)."""
    return ((index // 1_000_000) % THREADS + 1) * 1_000_000 + index % 16


def lifecycle_stress(
    attach: Callable[..., shmfs.Segment], key: int, handles: int, rounds: int
) -> None:
    """``handles`` handles in turn, each with eight threads on it and closed by one of them."""
    with _watchdog(100 + handles * rounds / 50):
        for seed in range(handles):
            state = _Round(attach(key, 64 << 20), seed, rounds)
            state.run()
            assert not state.errors, (seed, state.errors[:10])
            fresh = attach(key, 64 << 20)
            state.check_after(fresh)
            fresh.clear()  # the next handle's threads start from nothing
            fresh.detach()


def test_eight_threads_with_detach_and_destroy(attach: Any, key: int) -> None:
    lifecycle_stress(attach, key, 6, 300)


@pytest.mark.stress
def test_eight_threads_with_detach_and_destroy_long(attach: Any, key: int) -> None:
    lifecycle_stress(attach, key, 40, 2000)
