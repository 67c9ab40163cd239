"""Detach and destroy while other threads are inside an operation, on every backend.

A handle's resources (descriptors, mappings, the lock's file) must not be pulled from under a
thread that is taking or holding the segment lock: the lock is always given back, no thread
hangs, and every call after ``detach()`` raises ``SegmentDetached`` (after ``destroy()``,
``SegmentNotFound``), never ``ValueError`` from a released mapping or ``OSError`` from a closed
descriptor. Each test hands control between threads with events, never sleeps, and bounds every
wait, so that a hang is a failed test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import shmfs

# Ceiling on every wait: far above what any step takes, low enough to fail a hung test fast.
WAIT = 20.0


def _in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``call`` in a thread; the list gets its result, or the exception it raised."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # the test inspects whatever it was
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def _pause_after_take(seg: shmfs.Segment) -> tuple[threading.Event, threading.Event]:
    """Make the next process-level take of ``seg``'s lock stop once it has the lock, until the
    second event is set; the first says it got there."""
    lock: Any = seg._backend._lock  # type: ignore[attr-defined]  # the test's hook on the lock
    took, go_on = threading.Event(), threading.Event()
    take = lock._take

    def paused(timeout: float | None) -> None:
        take(timeout)
        lock._take = take  # once
        took.set()
        assert go_on.wait(WAIT)

    lock._take = paused
    return took, go_on


def _locked_put(seg: shmfs.Segment) -> None:
    """A put that takes the segment lock: the Python path's (the value is not plain), or on
    redis, where a single put is one script and takes none, one inside ``lock()``."""
    if seg.backend == "redis":
        with seg.lock():
            seg.put(1, 1j)
    else:
        seg.put(1, 1j)


def _lock_is_free(attach: Callable[..., shmfs.Segment], key: int) -> bool:
    """Whether another handle takes the segment lock at once."""
    other = attach(key)
    try:
        with other.lock(timeout=5):
            return True
    except shmfs.LockTimeout:
        return False
    finally:
        other.detach()


def test_detach_while_another_thread_takes_the_lock(
    attach: Callable[..., shmfs.Segment], key: int
) -> None:
    """The detach lands between a writer's taking the lock and its first look at the segment:
    the writer finishes (or says the handle was detached), gives the lock back, and every later
    call says detached."""
    seg = attach(key, 1 << 20)
    seg[1] = "old"
    took, go_on = _pause_after_take(seg)
    writer, outcome = _in_thread(lambda: _locked_put(seg))
    assert took.wait(WAIT)
    queued, queued_outcome = _in_thread(lambda: seg.incr(2))  # waits for the lock, or refused
    seg.detach()
    go_on.set()
    writer.join(WAIT)
    queued.join(WAIT)
    assert not writer.is_alive() and not queued.is_alive(), "a thread hangs"
    assert outcome[0] is None or isinstance(outcome[0], shmfs.SegmentDetached), outcome
    assert queued_outcome[0] == 1 or isinstance(queued_outcome[0], shmfs.SegmentDetached)
    with pytest.raises(shmfs.SegmentDetached):
        seg.get(1)
    with pytest.raises(shmfs.SegmentDetached):
        seg.put(1, "new")
    assert _lock_is_free(attach, key)
    with attach(key) as other:
        assert other[1] in ("old", 1j)


def test_detach_inside_the_lock_gives_it_back(
    attach: Callable[..., shmfs.Segment], key: int
) -> None:
    """``with seg.lock(): seg.detach()``: the block's exit still releases the lock, without an
    error, and the handle is detached."""
    seg = attach(key, 1 << 20)
    with seg.lock():
        seg[1] = "in"
        seg.detach()
        with pytest.raises(shmfs.SegmentDetached):
            seg.put(1, "after")
    assert _lock_is_free(attach, key)
    with pytest.raises(shmfs.SegmentDetached):
        seg.get(1)
    with attach(key) as other:
        assert other[1] == "in"


def test_detach_from_another_thread_while_one_holds_the_lock(
    attach: Callable[..., shmfs.Segment], key: int
) -> None:
    """Another thread detaches while one holds ``seg.lock()`` and writes: the holder's writes
    inside the block are not pulled from under it, and its exit gives the lock back."""
    seg = attach(key, 1 << 20)
    inside, detached = threading.Event(), threading.Event()

    def holder() -> str:
        with seg.lock():
            inside.set()
            assert detached.wait(WAIT)
            try:
                seg[1] = "inside"
            except shmfs.SegmentDetached:
                return "detached"
        return "done"

    thread, outcome = _in_thread(holder)
    assert inside.wait(WAIT)
    seg.detach()
    detached.set()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert outcome == ["detached"], outcome
    assert _lock_is_free(attach, key)


def test_destroy_while_another_thread_takes_the_lock(
    attach: Callable[..., shmfs.Segment], key: int
) -> None:
    """A destroy queued behind a writer that holds the lock waits for it, then destroys; every
    later call on the handle says the segment is gone."""
    seg = attach(key, 1 << 20)
    took, go_on = _pause_after_take(seg)
    writer, outcome = _in_thread(lambda: _locked_put(seg))
    assert took.wait(WAIT)
    destroyer, destroyed = _in_thread(seg.destroy)
    go_on.set()
    writer.join(WAIT)
    destroyer.join(WAIT)
    assert not writer.is_alive() and not destroyer.is_alive(), "a thread hangs"
    assert outcome == [None] and destroyed == [None], (outcome, destroyed)
    for call in (lambda: seg.get(1), lambda: seg.put(1, 2), lambda: len(seg)):
        with pytest.raises(shmfs.SegmentNotFound):
            call()


def test_every_call_after_detach_says_detached(seg: shmfs.Segment) -> None:
    seg[1] = "x"
    watch = seg.watch(1, timeout=5)
    seg.detach()
    calls: list[Callable[[], Any]] = [
        lambda: seg.get(1),
        lambda: seg.get(1, None),
        lambda: seg.has(1),
        lambda: 1 in seg,
        lambda: seg.put(1, "y"),
        lambda: seg.put(1, 1j),
        lambda: seg.remove(1),
        lambda: seg.add(2, 1),
        lambda: seg.incr(3),
        lambda: seg.cas(1, "x", "z"),
        lambda: seg.update(1, str),
        lambda: seg.update({1: 2}),
        lambda: len(seg),
        lambda: list(seg),
        seg.clear,
        seg.stats,
        lambda: seg.lock().__enter__(),
        lambda: seg.view(1).__enter__(),
        lambda: seg.wait(1, 0.01),
        lambda: seg.watch(1, 0.01),
        lambda: next(watch),
        seg.destroy,
        lambda: seg.size,
    ]
    for call in calls:
        with pytest.raises(shmfs.SegmentDetached):
            call()
    watch.close()
    seg.detach()  # idempotent


def test_a_watch_whose_handle_another_thread_detaches(seg: shmfs.Segment) -> None:
    """A thread waiting in ``watch`` while another detaches the handle wakes with
    ``SegmentDetached`` (at the latest when its timeout's next check comes), not an error from
    a closed descriptor."""
    seg[1] = "x"
    watch = seg.watch(1, timeout=WAIT)
    thread, outcome = _in_thread(lambda: next(watch))
    seg.detach()
    thread.join(WAIT + 5)
    assert not thread.is_alive()
    assert isinstance(outcome[0], shmfs.SegmentDetached), outcome
    watch.close()


def test_a_redis_watch_whose_socket_a_detach_closed_says_detached(redis_url: str, key: int) -> None:
    """The same, with the waiting thread surely inside its wait when the detach closes the
    subscription's socket under it: redis-py then raises ``ValueError`` (a closed file)."""
    seg = shmfs.attach(key, backend="redis", root=redis_url)
    try:
        seg[1] = "x"
        backend: Any = seg._backend  # type: ignore[attr-defined]  # the test's hook
        waiting = threading.Event()
        made = backend.watcher

        def noted_watcher() -> Any:
            watcher = made()
            real_wait = watcher.wait

            def wait(timeout: float) -> None:
                waiting.set()
                real_wait(timeout)

            watcher.wait = wait
            return watcher

        backend.watcher = noted_watcher
        watch = seg.watch(1, timeout=WAIT)
        thread, outcome = _in_thread(lambda: next(watch))
        assert waiting.wait(WAIT)
        time.sleep(0.2)  # into the socket's select
        seg.detach()
        thread.join(WAIT + 5)
        assert not thread.is_alive()
        assert isinstance(outcome[0], shmfs.SegmentDetached), outcome
        watch.close()
    finally:
        shmfs.attach(key, backend="redis", root=redis_url).destroy()


def test_a_view_whose_handle_is_detached_in_its_block(seg: shmfs.Segment) -> None:
    """A view open when the handle is detached ends quietly: the handle let go of what the
    view held as it closed, and the viewed bytes stay readable until the block ends."""
    seg[1] = b"v" * 10_000  # a file of its own: viewed in place on tmpfs
    with seg.view(1) as viewed:
        seg.detach()
        assert bytes(viewed[:3]) == b"vvv"
    with pytest.raises(shmfs.SegmentDetached):
        seg.view(1).__enter__()
