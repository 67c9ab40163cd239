"""Targets for child processes (spawned, so they live in an importable module).

Each takes the segment's reference (key, backend, root) and hands results back as data.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from typing import Any

import shmfs
from shmfs import hotpath


def open_seg(ref: dict[str, Any], **kwargs: Any) -> shmfs.Segment:
    if ref.get("pure"):  # the parent runs without the C fast path: so does this child
        hotpath._hot = None
    return shmfs.attach(ref["key"], backend=ref["backend"], root=ref["root"], **kwargs)


def incr_many(ref: dict[str, Any], index: int, times: int, start: Any) -> int:
    """Wait for ``start``, then increment ``index`` ``times`` times; return the pid."""
    with open_seg(ref) as seg:
        start.wait(30)
        for _ in range(times):
            seg.incr(index)
    return os.getpid()


def checked_value(seq: int, size: int) -> dict[str, Any]:
    """A value that proves its own integrity: a payload and its digest."""
    payload = (str(seq).encode() * (size // max(len(str(seq)), 1) + 1))[:size]
    return {"seq": seq, "payload": payload, "digest": hashlib.sha256(payload).hexdigest()}


def is_intact(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and hashlib.sha256(value["payload"]).hexdigest() == value["digest"]
        and value["payload"] == checked_value(value["seq"], len(value["payload"]))["payload"]
    )


SIZES = (1, 100, 3000, 70_000, 300_000, 5)


def write_forever(ref: dict[str, Any], index: int, first: int, started: Any) -> None:
    """Write ever-newer checked values of varying sizes until killed.

    A second variable is rewritten after each value, so that on a PHP-layout segment every
    replace of ``index`` has to move it (the memmove a kill must not tear).
    """
    with open_seg(ref) as seg:
        seq = first
        while True:
            seg.put(index, checked_value(seq, SIZES[seq % len(SIZES)]))
            seg.put(index + 1000, seq)
            if seq == first:
                started.set()
            seq += 1


def write_count(ref: dict[str, Any], index: int, count: int, started: Any) -> int:
    """Write ``count`` checked values of varying sizes, then return."""
    with open_seg(ref) as seg:
        started.set()
        for seq in range(1, count + 1):
            seg.put(index, checked_value(seq, SIZES[seq % len(SIZES)]))
    return count


def write_small(
    ref: dict[str, Any], index: int, count: int, started: Any, unmapped: bool = False
) -> int:
    """``write_count`` with values too big for a slot and under 64 KiB: a tmpfs reader
    without a mapping copies them with pread. ``unmapped``: write with pwrite, never through a
    mapping (see ``never_map``)."""
    if unmapped:
        never_map()
    with open_seg(ref) as seg:
        started.set()
        for seq in range(1, count + 1):
            seg.put(index, checked_value(seq, 5000 if seq % 2 else 9000))
    return count


def seq_bytes(seq: int, size: int) -> bytes:
    """A ``bytes`` value that proves its own integrity: ``seq`` at both ends, a byte of it
    between (a copy torn by a writer mixes two of these)."""
    ends = seq.to_bytes(8, "little")
    return ends + bytes([seq % 251]) * (size - 16) + ends


def write_bytes(ref: dict[str, Any], index: int, count: int, started: Any) -> int:
    """``write_count`` with ``bytes`` values past 64 KiB, of two sizes: the large values a get
    copies straight into the ``bytes`` it returns."""
    with open_seg(ref) as seg:
        started.set()
        for seq in range(1, count + 1):
            seg.put(index, seq_bytes(seq, 2_000_000 if seq % 2 else 600_000))
    return count


def never_map() -> None:
    """Make this process's tmpfs handles read every variable with pread, never mapping one."""
    from shmfs.backends.tmpfs import largevars as tmpfs  # noqa: PLC0415  # a test seam

    tmpfs.MAX_MAPPINGS = 0  # type: ignore[misc]  # the seam: reads find no room to map
    tmpfs._ADMIT_AFTER = sys.maxsize  # type: ignore[misc]


def read_while(
    ref: dict[str, Any], index: int, stop: Any, ready: Any, unmapped: bool = False
) -> dict[str, int]:
    """Read ``index`` until ``stop`` is set; count intact reads and anything else.

    ``unmapped``: read with pread only (see ``never_map``); ``mapped`` counts the mappings the
    handle holds at the end, to show it did."""
    counts = {"intact": 0, "bad": 0, "backwards": 0, "missing": 0}
    last = 0
    if unmapped:
        never_map()
    with open_seg(ref) as seg:
        ready.set()
        while not stop.is_set():
            value = seg.get(index, None)
            if value is None:
                counts["missing"] += 1
            elif not is_intact(value):
                counts["bad"] += 1
            else:
                counts["intact"] += 1
                if value["seq"] < last:
                    counts["backwards"] += 1
                last = value["seq"]
        large = getattr(seg._backend, "_large", None)
        counts["mapped"] = len(large.vars) if large is not None else 0
    return counts


def hold_lock(ref: dict[str, Any], held: Any, release: Any) -> None:
    """Hold the segment lock until ``release`` is set (or for 30 s)."""
    with open_seg(ref) as seg, seg.lock():
        held.set()
        release.wait(30)


def hold_lock_forever(ref: dict[str, Any], held: Any) -> None:
    """Take the segment lock and keep it until killed."""
    seg = open_seg(ref)
    with seg.lock():
        held.set()
        while True:
            time.sleep(1)


def attach_and_get(ref: dict[str, Any], index: int) -> Any:
    with open_seg(ref) as seg:
        return seg.get(index)


def get_from_pickled(seg: shmfs.Segment, index: int) -> Any:
    """Receive a pickled Segment and read through it."""
    try:
        return seg.get(index)
    finally:
        seg.detach()


def _report(queue: Any, slot: int, target: Any, args: tuple[Any, ...]) -> None:
    try:
        queue.put((slot, True, target(*args)))
    except BaseException as exc:
        queue.put((slot, False, repr(exc)))
        raise


class Children:
    """Processes running ``target(*args)``; ``results()`` returns what each returned.

    Unlike a Pool, its children inherit Events and Queues, so they can take part in handshakes.
    """

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx
        self._queue = ctx.Queue()
        self._procs: list[Any] = []

    def start(self, target: Any, *args: Any) -> Any:
        proc = self._ctx.Process(target=_report, args=(self._queue, len(self._procs), target, args))
        proc.start()
        self._procs.append(proc)
        return proc

    def results(self, timeout: float = 60) -> list[Any]:
        found: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        while len(found) < len(self._procs):
            slot, ok, value = self._queue.get(timeout=max(deadline - time.monotonic(), 0.1))
            if not ok:
                raise AssertionError(f"child {slot} failed: {value}")
            found[slot] = value
        return [found[slot] for slot in range(len(self._procs))]

    def stop(self) -> None:
        for proc in self._procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


def write_when_told(ref: dict[str, Any], index: int, values: list[Any], go: Any, ack: Any) -> int:
    """For each value: wait for ``go``, write it, stamp the time at index+1."""
    with open_seg(ref) as seg:
        for value in values:
            if not go.get(timeout=30):
                break
            seg[index + 1] = time.monotonic()
            seg[index] = value
            ack.put(True)
    return len(values)


def fill_disjoint(ref: dict[str, Any], keys: list[int], first: int, count: int, start: Any) -> int:
    """Write ``count`` variables from ``first`` in each segment of ``keys``; return how many."""
    segs = [shmfs.attach(key, backend=ref["backend"], root=ref["root"]) for key in keys]
    try:
        start.wait(30)
        for index in range(first, first + count):
            for seg in segs:
                seg[index] = {"index": index, "key": seg.key}
        return count * len(segs)
    finally:
        for seg in segs:
            seg.detach()


def churn_until_gone(ref: dict[str, Any], running: Any) -> dict[str, int]:
    """Read, write and remove until the segment is destroyed; count outcomes by type.
    ``running`` is set after the first round, so the destroyer knows we are in."""
    outcomes: dict[str, int] = {}
    seg = open_seg(ref)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            seg[1] = "x" * 100
            seg.get(1, None)
            seg.pop(2, None)
            seg[2] = [1, 2, 3]
            outcomes["ok"] = outcomes.get("ok", 0) + 1
            running.set()
        except (shmfs.SegmentNotFound, shmfs.VariableNotFound) as exc:
            outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
            if isinstance(exc, shmfs.SegmentNotFound):
                break
    seg.detach()
    return outcomes


def rmw_many(ref: dict[str, Any], kind: str, times: int, start: Any) -> int:
    """``times`` read-modify-writes of variable 1 by ``update``, ``cas`` or ``lock``."""
    with open_seg(ref) as seg:
        start.wait(30)
        for _ in range(times):
            if kind == "update":
                seg.update(1, lambda old: old + 1)
            elif kind == "cas":
                while True:
                    old = seg[1]
                    if seg.cas(1, old, old + 1):
                        break
            else:
                with seg.lock():
                    seg[1] = seg[1] + 1
    return times


def put_values(ref: dict[str, Any], index: int, values: list[Any]) -> float:
    """Store each of ``values`` at ``index`` in turn; return the seconds it took."""
    with open_seg(ref) as seg:
        began = time.monotonic()
        for value in values:
            seg.put(index, value)
        return time.monotonic() - began


def view_forever(ref: dict[str, Any], index: int, viewing: Any) -> None:
    """Open a view of ``index`` and keep it open until killed."""
    seg = open_seg(ref)
    with seg.view(index):
        viewing.set()
        while True:
            time.sleep(1)


def small_value(index: int, seq: int) -> dict[str, Any]:
    """A checked value for ``index`` small enough for a slot (sizes across several classes)."""
    value = checked_value(seq, SMALL_SIZES[seq % len(SMALL_SIZES)])
    value["index"] = index
    return value


SMALL_SIZES = (1, 20, 100, 300, 1000, 3000)


def churn_small(ref: dict[str, Any], first: int, started: Any, broken: bool = False) -> None:
    """Until killed: put values at new indices (from ``first`` up: inserts that grow the index),
    replace existing ones, and remove some of the ones this call inserted (so any variable of an
    earlier call that is missing was lost, not removed), all small. ``started`` is set after
    the first change.

    ``broken``: the negative control. The writer frees a variable's old slot before it
    publishes the new one (the order the format forbids), with the gap between the two widened
    so that a random kill lands in it most of the time, on the Python path."""
    import random  # noqa: PLC0415  # only this worker draws

    if broken:
        _free_before_publishing()
    rng = random.Random(first)
    with open_seg(ref) as seg:
        older = list(seg)
        mine: list[int] = []
        seq, fresh = first, first
        while True:
            draw = rng.random()
            if draw < 0.35 or not (older or mine):
                seg.put(fresh, small_value(fresh, seq))
                mine.append(fresh)
                fresh += 1
            elif draw < 0.8 or not mine:
                index = (
                    rng.choice(older or mine) if rng.random() < 0.7 else rng.choice(mine or older)
                )
                seg.put(index, small_value(index, seq))
            else:
                index = mine.pop(rng.randrange(len(mine)))
                seg.remove(index)
            if seq == first:
                started.set()
            seq += 1


def _free_before_publishing() -> None:
    """Swap the tmpfs writer's last two steps, for the negative control of the kill tests."""
    import time  # noqa: PLC0415

    from shmfs import hotpath  # noqa: PLC0415
    from shmfs.backends.tmpfs.backend import TmpfsBackend  # noqa: PLC0415

    hotpath._hot = None  # type: ignore[attr-defined]  # the seam: Python writes every value
    publish, unpublished = TmpfsBackend._publish, TmpfsBackend._unpublished
    held: list[tuple[Any, ...]] = []

    def hold(*args: Any) -> None:
        held.append(args)

    def free_then_publish(self: Any, index: int, loc: int, new: int) -> None:
        unpublished(self, index, loc, new)
        until = time.perf_counter() + 0.0002  # the gap a kill must find
        while time.perf_counter() < until:
            pass
        if held:  # a removal publishes nothing
            publish(*held.pop())

    TmpfsBackend._publish = staticmethod(hold)  # type: ignore[method-assign, assignment]
    TmpfsBackend._unpublished = free_then_publish  # type: ignore[method-assign]
