"""Timing primitives: each operation timed on its own, the timer's own cost taken out.

Every operation is bracketed by two ``perf_counter_ns`` calls, so medians and p99s are of single
operations, not of batch averages (a batch average hides the tail the p99 is there to show). The
bracket itself costs tens of nanoseconds; :func:`bracket_ns` measures it once per run and
:func:`to_us` subtracts it, which matters only for the floors (a dict lookup is cheaper than the
timer) and is noise for everything else.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "Stats",
    "Timing",
    "bracket_ns",
    "measure",
    "time_gets",
    "time_incrs",
    "time_puts",
    "to_us",
]

_now = time.perf_counter_ns


@dataclass(frozen=True, slots=True)
class Stats:
    """Microseconds per operation over ``n`` single-operation samples."""

    median: float
    p99: float
    mean: float
    n: int

    @classmethod
    def of(cls, samples_us: Iterable[float]) -> Stats:
        ordered = sorted(samples_us)
        if not ordered:
            raise ValueError("no samples")
        return cls(
            median=statistics.median(ordered),
            p99=_nearest_rank(ordered, 0.99),
            mean=statistics.fmean(ordered),
            n=len(ordered),
        )

    def ratio(self, baseline: Stats) -> float:
        """This median over ``baseline``'s: how many times slower (below 1: faster)."""
        return self.median / baseline.median if baseline.median > 0 else math.inf

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


# The name ``python -m bench.cache`` imports; the same summary.
Timing = Stats


def _nearest_rank(ordered: Sequence[float], quantile: float) -> float:
    # Nearest-rank, not interpolated: the p99 is then a latency that really happened.
    return ordered[min(len(ordered) - 1, max(0, math.ceil(quantile * len(ordered)) - 1))]


def bracket_ns(rounds: int = 20_000) -> float:
    """Median cost of an empty timing bracket, in ns: what :func:`to_us` subtracts."""
    samples = [0] * rounds
    for k in range(rounds):
        start = _now()
        samples[k] = _now() - start
    return float(statistics.median(samples))


def to_us(samples_ns: Iterable[int], bracket: float) -> list[float]:
    """Per-operation µs with the bracket's cost removed (never below zero)."""
    return [max(sample - bracket, 0.0) / 1000 for sample in samples_ns]


# One loop per call shape rather than one taking ``*args``: argument unpacking inside the bracket
# would be timed too, and it costs as much as a dict lookup.
def time_gets(get: Callable[[int], Any], indices: Sequence[int]) -> list[int]:
    """ns taken by ``get(i)`` for each ``i`` in ``indices``."""
    samples = [0] * len(indices)
    for k, index in enumerate(indices):
        start = _now()
        get(index)
        samples[k] = _now() - start
    return samples


def time_puts(put: Callable[[int, Any], Any], indices: Sequence[int], value: Any) -> list[int]:
    """ns taken by ``put(i, value)`` for each ``i`` in ``indices``."""
    samples = [0] * len(indices)
    for k, index in enumerate(indices):
        start = _now()
        put(index, value)
        samples[k] = _now() - start
    return samples


def time_incrs(incr: Callable[[int], Any], indices: Sequence[int]) -> list[int]:
    """ns taken by ``incr(i)`` for each ``i`` in ``indices``."""
    return time_gets(incr, indices)


def measure(call: Callable[[], object], *, batch: int = 2000, batches: int = 25) -> Stats:
    """Time ``call`` alone, ``batch * batches`` times after a warm-up (for small side scripts
    such as ``python -m bench.cache``; the main bench interleaves systems instead)."""
    for _ in range(min(batch, 200)):  # warm caches, mappings and the allocator
        call()
    bracket = bracket_ns(2000)
    samples: list[float] = []
    for _ in range(batches):
        raw = [0] * batch
        for k in range(batch):
            start = _now()
            call()
            raw[k] = _now() - start
        samples.extend(to_us(raw, bracket))
    return Stats.of(samples)
