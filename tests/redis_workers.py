"""Targets for the redis-only tests' child processes (spawned, so they live in a module)."""

from __future__ import annotations

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
