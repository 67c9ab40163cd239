"""Several processes on one store at once: the roles each child plays, and the run that starts
them together.

Children come from a ``forkserver`` that has already imported shmfs and the peers, so a run pays
milliseconds, not an interpreter start, per child. The start is a handshake, never a sleep: each
child opens the store, makes one call (connections and mappings are up), sets its own ``ready``
Event and waits on the shared ``go`` Event; the parent sets ``go`` once every child is ready.
Each child then works for the same number of seconds and reports its count and its own elapsed
time; rates are counts over those times.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.context
import queue
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.peers import open_child
from bench.system import Spec, System

__all__ = ["INDEX_COUNTER", "INDEX_VALUE", "VALUE_A", "VALUE_B", "Outcome", "run"]

# The writer flips between two values of one length, so a reader can tell a torn read (neither
# value, or an error decoding) from a good one, on every system alike.
VALUE_A, VALUE_B = "a" * 100, "b" * 100
INDEX_VALUE, INDEX_COUNTER = 1, 2
_CHECK_EVERY = 64  # calls between clock reads: a clock read costs as much as a dict get
_READY_TIMEOUT = 120.0
_PRELOAD = ["bench.processes", "bench.peers", "shmfs", "lmdb", "diskcache", "redis"]


@dataclass
class Outcome:
    """What one child did."""

    role: str
    count: int = 0
    elapsed: float = 0.0
    torn: int = 0
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.count / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class RunResult:
    """Every child's outcome, and the first error any had."""

    outcomes: list[Outcome] = field(default_factory=list)
    error: str | None = None

    def rate(self, role: str) -> float:
        return sum(o.rate for o in self.outcomes if o.role == role)

    def count(self, role: str) -> int:
        return sum(o.count for o in self.outcomes if o.role == role)

    def torn(self) -> int:
        return sum(o.torn for o in self.outcomes)


def _writer(system: System, seconds: float, outcome: Outcome) -> None:
    put, end = system.ops.put, time.monotonic() + seconds
    count = 0
    while True:
        for _ in range(_CHECK_EVERY // 2):
            put(INDEX_VALUE, VALUE_A)
            put(INDEX_VALUE, VALUE_B)
        count += _CHECK_EVERY
        if time.monotonic() >= end:
            break
    outcome.count = count


def _reader(system: System, seconds: float, outcome: Outcome) -> None:
    get, end = system.ops.get, time.monotonic() + seconds
    good = (VALUE_A, VALUE_B)
    count = torn = 0
    while True:
        for _ in range(_CHECK_EVERY):
            try:
                if get(INDEX_VALUE) not in good:
                    torn += 1
            except Exception:  # an undecodable torn read is still a read
                torn += 1
        count += _CHECK_EVERY
        if time.monotonic() >= end:
            break
    outcome.count, outcome.torn = count, torn


def _incrementer(system: System, seconds: float, outcome: Outcome) -> None:
    incr, end = system.ops.incr, time.monotonic() + seconds
    assert incr is not None
    count = 0
    # Counted call by call, not per block: the exactness check needs every increment made.
    while time.monotonic() < end:
        for _ in range(_CHECK_EVERY):
            incr(INDEX_COUNTER)
            count += 1
    outcome.count = count


ROLES: dict[str, Callable[[System, float, Outcome], None]] = {
    "writer": _writer,
    "reader": _reader,
    "incr": _incrementer,
}


def _child(role: str, spec: Spec, seconds: float, ready: Any, go: Any, results: Any) -> None:
    # Ctrl-C reaches the whole process group; the parent decides when children stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    outcome = Outcome(role)
    system: System | None = None
    try:
        system = open_child(spec)
        if role == "incr":
            system.counter(INDEX_COUNTER)
        else:
            system.ops.get(INDEX_VALUE)
        ready.set()
        if not go.wait(_READY_TIMEOUT):
            raise TimeoutError("no go from the parent")
        began = time.monotonic()
        ROLES[role](system, seconds, outcome)
        outcome.elapsed = time.monotonic() - began
    except BaseException as exc:  # reported to the parent, which decides
        outcome.error = f"{role}: {type(exc).__name__}: {exc}"
        ready.set()  # never leave the parent waiting on a child that failed
    finally:
        if system is not None:
            with contextlib.suppress(Exception):
                system.close()
        results.put(outcome)


def _context() -> multiprocessing.context.ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)  # modules that fail to import are skipped
    return ctx


def run(spec: Spec, roles: list[str], seconds: float) -> RunResult:
    """Start one child per role on the store ``spec`` names, all at once; collect outcomes."""
    ctx = _context()
    go = ctx.Event()
    readies = [ctx.Event() for _ in roles]
    results: Any = ctx.Queue()
    procs = [
        ctx.Process(target=_child, args=(role, spec, seconds, ready, go, results), daemon=True)
        for role, ready in zip(roles, readies, strict=True)
    ]
    result = RunResult()
    try:
        for proc in procs:
            proc.start()
        deadline = time.monotonic() + _READY_TIMEOUT
        for ready, proc in zip(readies, procs, strict=True):
            while not ready.wait(0.1):
                if not proc.is_alive() or time.monotonic() > deadline:
                    result.error = f"a child never got ready (exit code {proc.exitcode})"
                    return result
        go.set()
        for _ in procs:
            try:
                outcome: Outcome = results.get(timeout=seconds + 120)
            except queue.Empty:
                result.error = "a child did not report"
                return result
            result.outcomes.append(outcome)
            if outcome.error and result.error is None:
                result.error = outcome.error
        for proc in procs:
            proc.join(30)
        return result
    finally:
        go.set()  # children still waiting (a failed start) leave at once
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        results.close()
        results.join_thread()
