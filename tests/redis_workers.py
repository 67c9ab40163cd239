"""Targets for the redis-only tests' child processes (spawned, so they live in a module)."""

from __future__ import annotations

import time
from typing import Any

import shmfs
from tests.workers import open_seg


def hold_then_write(ref: dict[str, Any], held: Any, go: Any, expiry: float) -> str:
    """Hold the lock on a lease of ``expiry`` s; when told, write through it and say whether
    the write was ``"written"`` or ``"refused"``."""
    with open_seg(ref, lock_expiry=expiry) as seg, seg.lock():
        held.set()
        go.wait(30)
        try:
            seg[1] = "late holder"
        except shmfs.LockTimeout:
            return "refused"
        return "written"


def incr_many(ref: dict[str, Any], index: int, times: int) -> int:
    """Increment ``index`` ``times`` times; how many increments were made."""
    with open_seg(ref) as seg:
        for _ in range(times):
            seg.incr(index)
    return times


def incr_through_outages(url: str, key: int, index: int, acks: int) -> dict[str, Any]:
    """Make ``acks`` acknowledged increments, through server crashes: retry what the error says
    was not made, count (and never retry) what it says may have been. Reports the counts and
    the longest a successful call took."""
    made = unknown = 0
    longest = 0.0
    deadline = time.monotonic() + 120
    while True:  # a worker slow to start may attach while the server is down: so does a user
        try:
            seg = shmfs.attach(key, backend="redis", root=url, codec="json", lock_timeout=30)
            break
        except shmfs.BackendUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)
    with seg:
        while made < acks and time.monotonic() < deadline:
            began = time.monotonic()
            try:
                seg.incr(index)
            except shmfs.BackendUnavailable as exc:
                if exc.committed is None:
                    unknown += 1
                time.sleep(0.005)  # the server is down: try again shortly
                continue
            longest = max(longest, time.monotonic() - began)
            made += 1
    return {"made": made, "unknown": unknown, "longest": longest}


def incr_until(url: str, key: int, index: int, started: Any, stop: Any, results: Any) -> None:
    """Increment ``index`` until told to stop (``started`` is set after the first); put how
    many increments were made in ``results``, or the error that stopped them."""
    made = 0
    try:
        with shmfs.attach(key, backend="redis", root=url, codec="json") as seg:
            while not stop.is_set():
                seg.incr(index)
                made += 1
                started.set()
    except Exception as exc:  # reported to the test, which fails on it
        results.put(f"{type(exc).__name__}: {exc} (after {made})")
        return
    results.put(made)
