"""The cases: what is measured, on which systems, in what order.

* ``point_ops``: get and put of each value at one index, every system interleaved round by round
  (each round visits every system once, in a fresh random order), so a noisy neighbour or a
  frequency change moves all systems alike and ratios stay honest.
* ``fill_curve``: every system filled to 1, 10, ... 100k variables of the 100-byte str; at each
  size, gets and puts of indices drawn uniformly among them, interleaved the same way. A system
  that cannot fill within its time budget (or holds fewer variables here) stops, and says so.
  Beside it, from 1,000 variables on, the machine's cold-read floor (``bench/coldread.py``) over
  as many bytes as shmfs tmpfs's files hold.
* ``writer_readers``: one writer and 1..4 readers in separate processes on one variable.
* ``incr_contention``: N processes incrementing one variable; the total must be exact.

Multi-process cases interleave by run: for each process count, every system takes its turn.
"""

from __future__ import annotations

import contextlib
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import shmfs
from bench import processes
from bench.coldread import floor_stats
from bench.peers import FACTORIES
from bench.php import PhpSubject
from bench.scratch import Scratch
from bench.system import Footprint, System, Unavailable
from bench.timing import Stats, bracket_ns, measure, time_gets, time_puts, to_us
from bench.values import SMALL, VALUES, Picks

__all__ = [
    "FULL",
    "QUICK",
    "Plan",
    "fill_curve",
    "incr_contention",
    "point_ops",
    "writer_readers",
    "zero_copy_views",
]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """How much of each case to run."""

    rounds: int  # interleaved rounds per value
    batch: int  # calls per batch (each timed alone) for small values...
    big_batch: int  # ... and for the 1 MiB value
    batch_seconds: float  # a slow system's batch is cut to about this long
    fill_sizes: tuple[int, ...]
    fill_rounds: int
    fill_batch: int
    fill_budget: float  # seconds each system may spend filling, over the whole curve
    readers: tuple[int, ...]
    incr_workers: tuple[int, ...]
    process_seconds: float  # each multi-process run
    repeats: int  # runs of each multi-process configuration, interleaved
    scale_sizes: tuple[int, ...]  # bench/scale.py: variables filled to, one tmpfs
    churn: tuple[int, int]  # variables, operations
    cache_keys: int
    frameworks: tuple[int, int, int]  # bench/frameworks.py: rounds, batch, batches per round


_TMPFS = "shmfs tmpfs"  # the system the cold-read floor is sized for

QUICK = Plan(
    rounds=5,
    batch=150,
    big_batch=8,
    batch_seconds=0.02,
    fill_sizes=(1, 10, 100, 1000, 10_000),
    fill_rounds=3,
    fill_batch=100,
    fill_budget=2.5,
    readers=(1,),
    incr_workers=(8,),
    process_seconds=0.4,
    repeats=1,
    scale_sizes=(10, 1000, 10_000),
    churn=(5_000, 20_000),
    cache_keys=5_000,
    frameworks=(2, 100, 3),
)
FULL = Plan(
    rounds=21,
    batch=500,
    big_batch=30,
    batch_seconds=0.05,
    fill_sizes=(1, 10, 100, 1000, 10_000, 100_000),
    fill_rounds=9,
    fill_batch=300,
    fill_budget=40.0,
    readers=(1, 2, 3, 4),
    incr_workers=(1, 2, 4, 8),
    process_seconds=1.5,
    repeats=3,
    scale_sizes=(10, 1000, 10_000, 100_000, 1_000_000),
    churn=(100_000, 1_000_000),
    cache_keys=200_000,
    frameworks=(5, 500, 10),
)


class Subject(Protocol):
    """Anything the interleaved rounds can time: an in-process system, or PHP."""

    name: str
    note: str

    def supports(self, value_name: str) -> bool: ...

    def timed_round(self, value_name: str, picks: Picks) -> dict[str, list[float]]: ...

    def fill(self, start: int, stop: int, seconds: float) -> int: ...

    def close(self) -> None: ...


class InProcess:
    """A :class:`System` timed in this process, call by call."""

    def __init__(self, system: System, bracket: float) -> None:
        self.system = system
        self.name = system.name
        self.note = system.note
        self.bracket = bracket

    def supports(self, value_name: str) -> bool:
        return self.system.supports(VALUES[value_name])

    def timed_round(self, value_name: str, picks: Picks) -> dict[str, list[float]]:
        value, ops = VALUES[value_name], self.system.ops
        put = to_us(time_puts(ops.put, picks.indices(0), value), self.bracket)
        get = to_us(time_gets(ops.get, picks.indices(1)), self.bracket)
        return {"put": put, "get": get}

    def fill(self, start: int, stop: int, seconds: float) -> int:
        # In steps, so a system whose puts slow down as it fills (a chunk walk) stops on time.
        deadline, step = time.monotonic() + seconds, 1000
        for low in range(start, stop, step):
            if time.monotonic() > deadline:
                return low
            self.system.fill(range(low, min(low + step, stop)), VALUES[SMALL])
        return stop

    def close(self) -> None:
        self.system.close()


@dataclass
class Opened:
    """The subjects a case runs on, and the systems that could not run, with the reason."""

    systems: list[InProcess] = field(default_factory=list)
    php: list[PhpSubject] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def subjects(self) -> list[Subject]:
        return [*self.systems, *self.php]

    def close(self) -> None:
        for subject in self.subjects:
            with contextlib.suppress(Exception):  # the scratch's closers retry and report
                subject.close()


def _open(
    scratch: Scratch,
    progress: Progress,
    *,
    shared_only: bool = False,
    variants: bool = False,
    php_size: int | None = None,
    quiet: bool = False,
) -> Opened:
    """Make a fresh store of every system (and PHP's two variants when ``php_size``)."""
    opened, bracket = Opened(), bracket_ns()
    for name, factory in FACTORIES.items():
        try:
            system = factory(scratch)
        except Unavailable as exc:
            opened.unavailable[name] = str(exc)
            continue
        scratch.on_close(system.name, system.close)  # removed even if the run is interrupted
        if (shared_only and not system.shared) or (system.variant and not variants):
            system.close()
            continue
        opened.systems.append(InProcess(system, bracket))
    if php_size is not None:
        for locked in (False, True):
            try:
                opened.php.append(PhpSubject(scratch, locked=locked, size=php_size))
            except Unavailable as exc:
                opened.unavailable["PHP" + (" + sem_acquire" if locked else "")] = str(exc)
    for name, why in opened.unavailable.items():
        if not quiet:  # the first case says it; the later ones would only repeat it
            progress(f"{name}: not available ({why})")
    return opened


def _median_call(subject: Subject, value_name: str, picks: Picks) -> float:
    """Warm a subject up on ``picks`` and return its median put+get µs: sizes its batches."""
    got = subject.timed_round(value_name, picks)
    return statistics.median(got["put"]) + statistics.median(got["get"])


def _batch_for(cost_us: float, plan: Plan, wanted: int) -> int:
    # A slow system gets fewer calls per batch, never fewer than 5: rounds stay short enough
    # that every system is visited often, and the run's length stays bounded.
    return max(5, min(wanted, int(plan.batch_seconds * 1e6 / max(cost_us, 0.01))))


def _rounds(
    subjects: list[Subject],
    value_name: str,
    counts: dict[str, int],
    rounds: int,
    among: int | None,
    failed: dict[str, str],
    seed: int,
) -> dict[str, dict[str, list[float]]]:
    """Interleaved rounds: every subject once per round, in a fresh random order."""
    samples: dict[str, dict[str, list[float]]] = {s.name: {"put": [], "get": []} for s in subjects}
    order = list(subjects)
    rng = random.Random(seed)
    for round_no in range(rounds):
        rng.shuffle(order)
        for subject in order:
            if subject.name in failed:
                continue
            picks = Picks(counts[subject.name], among, seed=seed * 1000 + round_no)
            try:
                got = subject.timed_round(value_name, picks)
            except Exception as exc:  # one failing system must not end the run
                failed[subject.name] = f"{type(exc).__name__}: {exc}"
                continue
            for op, values in got.items():
                samples[subject.name][op].extend(values)
    return samples


def point_ops(scratch: Scratch, plan: Plan, progress: Progress) -> dict[str, Any]:
    """get/put of every value: ``{"results": {value: {system: {op: Stats}}}, ...}``."""
    opened = _open(scratch, progress, variants=True, php_size=8 << 20)
    results: dict[str, dict[str, dict[str, Stats]]] = {}
    errors: dict[str, dict[str, str]] = {}
    try:
        for value_name in VALUES:
            wanted = plan.big_batch if value_name == "bytes1m" else plan.batch
            subjects = [s for s in opened.subjects if s.supports(value_name)]
            failed: dict[str, str] = {}
            counts: dict[str, int] = {}
            for subject in subjects:
                try:
                    cost = _median_call(subject, value_name, Picks(min(wanted, 50)))
                except Exception as exc:  # reported in the table instead
                    failed[subject.name] = f"{type(exc).__name__}: {exc}"
                    continue
                counts[subject.name] = _batch_for(cost, plan, wanted)
            progress(f"point ops, {value_name}: {plan.rounds} interleaved rounds")
            samples = _rounds(subjects, value_name, counts, plan.rounds, None, failed, seed=1)
            results[value_name] = {
                name: {op: Stats.of(values) for op, values in ops.items()}
                for name, ops in samples.items()
                if name not in failed and ops["get"]
            }
            errors[value_name] = failed
            for name, ops in results[value_name].items():
                progress(
                    f"  {value_name:8} {name:32} get {ops['get'].median:9.2f} µs"
                    f"  put {ops['put'].median:9.2f} µs"
                )
            for name, why in failed.items():
                progress(f"  {value_name:8} {name:32} FAILED: {why}")
    finally:
        opened.close()
    return {
        "results": results,
        "errors": errors,
        "unavailable": opened.unavailable,
        "notes": {s.name: s.note for s in opened.subjects},
    }


@dataclass
class _FillState:
    filled: int = 0
    spent: float = 0.0
    stopped: str | None = None
    footprint: dict[int, Footprint] = field(default_factory=dict)


def _fill_to(subject: Subject, state: _FillState, size: int, plan: Plan) -> None:
    system = subject.system if isinstance(subject, InProcess) else None
    limit = system.max_variables if system is not None else None
    if limit is not None and size > limit:
        state.stopped = f"capped at {limit:,} variables here (a descriptor and mapping each)"
        return
    began = time.monotonic()
    reached = subject.fill(state.filled, size, plan.fill_budget - state.spent)
    state.spent += time.monotonic() - began
    state.filled = reached
    if reached < size:
        state.stopped = (
            f"stopped filling at {reached:,} variables: {plan.fill_budget:.0f} s budget spent"
        )
        return
    footprint = system.footprint() if system is not None else None
    if footprint is not None:
        state.footprint[size] = footprint


def sysv_segment_bytes(scratch: Scratch, size: int = 10_000) -> int | str:
    """What ``ipcs`` says a sysv segment made for ``size`` takes (its PHP area and the journal
    past it), or why it could not be measured."""
    from shmfs.backends.sysv import ipc  # noqa: PLC0415  # only this measure needs it

    key = scratch.sysv_key()
    try:
        seg = shmfs.attach(key, size, backend="sysv")
    except shmfs.ShmfsError as exc:
        return f"{type(exc).__name__}: {exc}"
    try:
        return int(ipc.shm_stat(ipc.shmget(key, 0, 0)).size)
    finally:
        seg.destroy()


def kernel_bytes_per_file() -> int | None:
    """What one more file on tmpfs costs the kernel beyond its pages: an inode and a dentry,
    at their slab object sizes (/proc/slabinfo, readable by root); ``None`` if unreadable."""
    sizes: dict[str, int] = {}
    with contextlib.suppress(OSError), open("/proc/slabinfo", encoding="ascii") as info:
        for line in info:
            parts = line.split()
            if parts and parts[0] in ("shmem_inode_cache", "dentry"):
                sizes[parts[0]] = int(parts[3])
    return sum(sizes.values()) if len(sizes) == 2 else None


def fill_curve(scratch: Scratch, plan: Plan, progress: Progress) -> dict[str, Any]:
    """get/put among N variables for growing N: ``{"results": {system: {N: {op: Stats}}}}``."""
    opened = _open(scratch, progress, php_size=32 << 20, quiet=True)
    subjects = [s for s in opened.subjects if s.supports(SMALL)]
    states = {s.name: _FillState() for s in subjects}
    results: dict[str, dict[int, dict[str, Stats]]] = {s.name: {} for s in subjects}
    floor: dict[int, dict[str, Stats]] = {}
    failed: dict[str, str] = {}
    try:
        for size in plan.fill_sizes:
            active: list[Subject] = []
            for subject in subjects:
                state = states[subject.name]
                if state.stopped or subject.name in failed:
                    continue
                try:
                    _fill_to(subject, state, size, plan)
                except Exception as exc:  # reported in the table instead
                    failed[subject.name] = f"{type(exc).__name__}: {exc}"
                    continue
                if state.stopped:
                    progress(f"fill {subject.name}: {state.stopped}")
                    subject.close()  # its descriptors and memory go to the systems still filling
                else:
                    active.append(subject)
            counts: dict[str, int] = {}
            for subject in active:
                try:
                    cost = _median_call(subject, SMALL, Picks(10, size, seed=size))
                except Exception as exc:
                    failed[subject.name] = f"{type(exc).__name__}: {exc}"
                    continue
                counts[subject.name] = _batch_for(cost, plan, plan.fill_batch)
            active = [s for s in active if s.name in counts]
            progress(f"fill curve: {size:,} variables, {len(active)} systems")
            samples = _rounds(active, SMALL, counts, plan.fill_rounds, size, failed, seed=size)
            footprint = states[_TMPFS].footprint.get(size) if _TMPFS in states else None
            if footprint is not None and size >= 1000:  # the machine's cold read, as large
                count = plan.fill_batch * plan.fill_rounds
                floor[size] = floor_stats(scratch.shm_path("floor"), footprint.bytes, count, size)
            for subject in active:
                ops = samples[subject.name]
                if subject.name not in failed and ops["get"]:
                    results[subject.name][size] = {op: Stats.of(v) for op, v in ops.items()}
                    progress(
                        f"  {size:>7,} {subject.name:32} get "
                        f"{results[subject.name][size]['get'].median:9.2f} µs  put "
                        f"{results[subject.name][size]['put'].median:9.2f} µs"
                    )
    finally:
        opened.close()
    return {
        "results": results,
        "floor": floor,
        "sysv_segment_bytes": sysv_segment_bytes(scratch),
        "stopped": {name: state.stopped for name, state in states.items() if state.stopped},
        "footprint": {name: state.footprint for name, state in states.items()},
        "kernel_bytes_per_file": kernel_bytes_per_file(),
        "errors": failed,
        "unavailable": opened.unavailable,
    }


def _shared_systems(scratch: Scratch, progress: Progress, need_incr: bool) -> Opened:
    opened = _open(scratch, progress, shared_only=True, quiet=True)
    if need_incr:
        for subject in list(opened.systems):
            if subject.system.ops.incr is None:
                opened.unavailable[subject.name] = "no atomic increment"
                subject.close()
                opened.systems.remove(subject)
    return opened


def _summary(runs: list[dict[str, Any]], rates: tuple[str, ...]) -> dict[str, Any]:
    """Several runs of one configuration: the median of each rate, its range, every run kept.
    Rates of processes sharing two cores with the rest of the machine vary from run to run;
    the median is the figure, the range says how far to trust it."""
    good = [run for run in runs if not run["error"]]
    summary: dict[str, Any] = {
        "runs": runs,
        "error": next((run["error"] for run in runs if run["error"]), None),
    }
    for rate in rates:
        values = [run[rate] for run in good]
        summary[rate] = statistics.median(values) if values else 0.0
        summary[f"{rate}_range"] = [min(values), max(values)] if values else None
    return summary


def writer_readers(scratch: Scratch, plan: Plan, progress: Progress) -> dict[str, Any]:
    """One writer and R readers at once: ``{"results": {system: {R: summary}}}``."""
    opened = _shared_systems(scratch, progress, need_incr=False)
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {s.name: {} for s in opened.systems}
    try:
        for subject in opened.systems:
            subject.system.ops.put(processes.INDEX_VALUE, processes.VALUE_A)
        for repeat in range(plan.repeats):
            for readers in plan.readers:
                for subject in opened.systems:
                    system = subject.system
                    run = processes.run(
                        system.spec(), ["writer"] + ["reader"] * readers, plan.process_seconds
                    )
                    entry = {
                        "puts_per_s": run.rate("writer"),
                        "gets_per_s": run.rate("reader"),
                        "torn_reads": run.torn(),
                        "error": run.error,
                    }
                    runs[system.name].setdefault(readers, []).append(entry)
                    progress(
                        f"run {repeat + 1}/{plan.repeats}: writer + {readers} reader(s), "
                        f"{system.name:30} "
                        + (
                            f"FAILED: {run.error}"
                            if run.error
                            else f"{entry['puts_per_s']:>10,.0f} puts/s "
                            f"{entry['gets_per_s']:>10,.0f} gets/s  torn {entry['torn_reads']}"
                        )
                    )
    finally:
        opened.close()
    results = {
        name: {
            readers: {
                **_summary(entries, ("puts_per_s", "gets_per_s")),
                "torn_reads": sum(entry["torn_reads"] for entry in entries),
            }
            for readers, entries in by_readers.items()
        }
        for name, by_readers in runs.items()
    }
    return {"results": results, "unavailable": opened.unavailable}


def incr_contention(scratch: Scratch, plan: Plan, progress: Progress) -> dict[str, Any]:
    """N processes incrementing one variable: ``{"results": {system: {N: summary}}}``."""
    opened = _shared_systems(scratch, progress, need_incr=True)
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {s.name: {} for s in opened.systems}
    try:
        for repeat in range(plan.repeats):
            for workers in plan.incr_workers:
                for subject in opened.systems:
                    system = subject.system
                    system.reset_counter(processes.INDEX_COUNTER)
                    run = processes.run(system.spec(), ["incr"] * workers, plan.process_seconds)
                    final = system.counter(processes.INDEX_COUNTER)
                    made = run.count("incr")
                    entry = {
                        "incr_per_s": run.rate("incr"),
                        "increments": made,
                        "final": final,
                        "exact": run.error is None and final == made,
                        "error": run.error,
                    }
                    runs[system.name].setdefault(workers, []).append(entry)
                    progress(
                        f"run {repeat + 1}/{plan.repeats}: incr x {workers} processes, "
                        f"{system.name:30} "
                        + (
                            f"FAILED: {run.error}"
                            if run.error
                            else f"{entry['incr_per_s']:>10,.0f}/s  exact: {entry['exact']}"
                            f" ({final:,} of {made:,})"
                        )
                    )
    finally:
        opened.close()
    results = {
        name: {
            workers: {
                **_summary(entries, ("incr_per_s",)),
                "exact": all(entry["exact"] for entry in entries),
                "final": sum(entry["final"] for entry in entries),
                "increments": sum(entry["increments"] for entry in entries),
            }
            for workers, entries in by_workers.items()
        }
        for name, by_workers in runs.items()
    }
    return {"results": results, "unavailable": opened.unavailable}


#: Value sizes the zero-copy case views: a view must cost the same at each. From 8 KiB: a value
#: small enough for a slot (4 KiB with its headers) is copied by a view, by design (a few KiB).
VIEW_SIZES: tuple[int, ...] = (8 << 10, 1 << 20, 32 << 20)


def zero_copy_views(scratch: Scratch, plan: Plan, progress: Progress) -> dict[str, Any]:
    """``with seg.view(i) as v: v[0]`` on tmpfs for bytes of growing size, and ``get`` of the
    same values for contrast: ``{"view": {size: Stats}, "get": {size: Stats}}``."""
    root = scratch.shm_path("shmfs-views")
    os.mkdir(root, 0o700)
    seg = shmfs.attach(0x5EB0_0003, 2 * VIEW_SIZES[-1] + (1 << 20), root=root)
    scratch.on_close("shmfs views", seg.destroy)
    results: dict[str, dict[int, Stats]] = {"view": {}, "get": {}}
    batches = max(plan.rounds, 3)

    def view() -> None:
        with seg.view(1) as value:
            value[0]

    for size in VIEW_SIZES:
        seg[1] = os.urandom(size)
        results["view"][size] = measure(view, batch=200, batches=batches)
        results["get"][size] = measure(lambda: seg[1], batch=10, batches=batches)
        progress(
            f"zero-copy view of {size:>10,} B: {results['view'][size].median:8.2f} µs"
            f"  (get: {results['get'][size].median:10.2f} µs)"
        )
    return results
