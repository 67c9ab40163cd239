"""Timing primitives: repeated batches, median and p99 per operation."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """Microseconds per call over several batches."""

    median: float
    p99: float

    def ratio(self, baseline: Timing) -> float:
        return self.median / baseline.median if baseline.median else float("inf")


def measure(call: Callable[[], object], *, batch: int = 2000, batches: int = 25) -> Timing:
    """Time ``call`` in ``batches`` batches of ``batch`` calls; per-call µs of each batch."""
    for _ in range(min(batch, 200)):  # warm caches, mappings and allocator
        call()
    per_call = []
    for _ in range(batches):
        start = time.perf_counter_ns()
        for _ in range(batch):
            call()
        per_call.append((time.perf_counter_ns() - start) / batch / 1000)
    per_call.sort()
    return Timing(
        statistics.median(per_call), per_call[min(len(per_call) - 1, int(len(per_call) * 0.99))]
    )
