"""SQLite-style fault loops: fail the Nth filesystem call of an operation, once and then for
good, for every N until the operation completes untouched by faults.

Each faulted call must raise a shmfs error (never a raw OSError), leave the previous value intact
and leave nothing behind; once the fault is gone the store must work. The seam is the ``os``
module: the tmpfs backend calls ``os.<function>`` at call time, so patching it reaches every
system call the backend makes.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest

import shmfs


@pytest.fixture
def backend(tmpfs_backend: str) -> str:
    """These tests reach into tmpfs files: they run on the tmpfs backend only (with the C
    fast path and without it)."""
    return tmpfs_backend


FAULTABLE = (
    "open",
    "fstat",
    "fchmod",
    "posix_fallocate",
    "pwritev",
    "pwrite",
    "pread",
    "rename",
    "unlink",
    "listdir",
    "mkdir",
    "rmdir",
)


class Faults:
    """Counts calls to the patched ``os`` functions and fails from the ``nth`` one on."""

    def __init__(self, nth: int, code: int, persistent: bool) -> None:
        self.nth, self.code, self.persistent = nth, code, persistent
        self.calls = 0
        self.fired = 0

    def wrap(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def faulty(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == self.nth or (self.persistent and self.calls > self.nth):
                self.fired += 1
                raise OSError(self.code, os.strerror(self.code))
            return real(*args, **kwargs)

        return faulty


@contextmanager
def injected(faults: Faults) -> Iterator[None]:
    patches = [mock.patch.object(os, name, faults.wrap(getattr(os, name))) for name in FAULTABLE]
    for patch in patches:
        patch.start()
    try:
        yield
    finally:
        for patch in reversed(patches):
            patch.stop()


def no_litter(seg: shmfs.Segment) -> list[str]:
    with seg.lock():  # a failed writer's leftovers are gone once the lock is taken
        location = seg.stats()["location"]
        return [name for name in os.listdir(location) if name.startswith(".tmp-")]


OPERATIONS: dict[str, Callable[[shmfs.Segment], Any]] = {
    "put-new-index": lambda seg: seg.put(2, "fresh"),
    "put-new-large": lambda seg: seg.put(2, "L" * 50_000),
    "put-new-class": lambda seg: seg.put(2, "c" * 3_000),
    "put-grow": lambda seg: seg.put(1, "G" * 50_000),
    "put-shrink": lambda seg: seg.put(3, "s"),
    "put-in-place": lambda seg: seg.put(1, "in place"),
    "remove": lambda seg: seg.remove(1),
    "remove-large": lambda seg: seg.remove(3),
    "incr": lambda seg: seg.incr(4),
}


@pytest.mark.parametrize("persistent", [False, True], ids=["once", "persistent"])
@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC], ids=["EIO", "ENOSPC"])
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_nth_call_fault_loop(
    attach: Any, key: int, operation: str, code: int, persistent: bool
) -> None:
    seg = attach(key, 16 << 20)
    do = OPERATIONS[operation]
    injected_total = 0
    for nth in range(1, 200):
        seg[1] = "old one"
        seg[3] = "B" * 300_000
        seg[4] = 10
        seg.pop(2, None)
        faults = Faults(nth, code, persistent)
        with injected(faults):
            try:
                do(seg)
                raised: Exception | None = None
            except shmfs.ShmfsError as exc:
                raised = exc
            except OSError as exc:  # pragma: no cover - the failure this test exists for
                pytest.fail(f"raw {exc!r} escaped on call {nth} of {operation}")
        injected_total += faults.fired
        if faults.fired == 0:
            break  # the operation made fewer than nth calls: every position was faulted
        if raised is not None:
            if code == errno.ENOSPC:
                assert isinstance(raised, (shmfs.SegmentFull, shmfs.ShmfsError))
            assert seg[1] == "old one", f"call {nth}: old value lost"
            if operation != "remove-large":
                assert seg[3] == "B" * 300_000
            assert seg[4] == 10
            assert 2 not in seg
        assert no_litter(seg) == [], f"call {nth}: temp files left"
        seg[5] = "still usable"
        assert seg[5] == "still usable"
    else:  # pragma: no cover
        pytest.fail("operation never completed without faults")
    # A small value lives in a slot: storing or removing one is no filesystem call at all,
    # unless it takes the first slot of a size class (put-new-class adds its file).
    if operation not in ("put-in-place", "incr", "put-new-index", "remove"):
        assert injected_total > 0, "no filesystem call was faulted: the seam is not reached"


def test_in_place_puts_make_no_filesystem_calls(seg: shmfs.Segment) -> None:
    seg[1] = "first"
    seg.get(1)
    seg.get(1)  # the second read maps it
    faults = Faults(1, errno.EIO, persistent=True)
    with injected(faults):
        seg[1] = "second"
        assert seg[1] == "second"
        assert seg.incr(1, "!") == "second!"
    assert faults.calls == 0  # the fast path is memory stores and one flock, nothing else
