"""sysv only: a handle closed by a finalizer while a put holds PHP's lock.

A sysv put tells the chain index what it wrote before it gives the lock back
(``ChainIndex.stored``), and that call allocates, so a collection may run finalizers there.
One that detaches the handle finds the lock held: the close waits for the holder's release. On
the C path the holder is the C put (it took the lock itself, at depth 0); its release, too, must
run the close, or the handle stays attached to the segment and counted a user of PHP's
semaphore set for the life of the process. Both paths run (the ``sysv_paths`` fixture).
"""

from __future__ import annotations

import gc
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

import shmfs
from shmfs.backends.sysv import ipc

# The semaphore set's member counting its users (PHP's sysvsem: docs/sysv-and-php.md §4).
_SEM_USERS = 1


@pytest.fixture(autouse=True)
def paths(sysv_paths: str) -> str:
    """Each test with the C fast path and without it."""
    return sysv_paths


@pytest.fixture
def sysv_key(key: int) -> Iterator[int]:
    yield key
    for option in ("-M", "-S"):
        subprocess.run(["ipcrm", option, hex(key)], capture_output=True, check=False)


class _Detaches:
    """An object whose finalizer detaches ``seg``."""

    def __init__(self, seg: shmfs.Segment, done: list[bool]) -> None:
        self.seg = seg
        self.done = done

    def __del__(self) -> None:
        self.done.append(True)
        self.seg.detach()


def test_a_finalizer_detaches_the_handle_while_a_put_tells_the_chain_index(sysv_key: int) -> None:
    seg = shmfs.attach(sysv_key, 1 << 16, backend="sysv")
    other = shmfs.attach(sysv_key, backend="sysv")  # keeps the semaphore set alive after
    try:
        backend: Any = seg._backend  # type: ignore[attr-defined]  # the test's view of it
        shmid, semid = backend.shmid, backend._semaphore.semid
        for index in range(8):
            seg[index] = 0
        detached: list[bool] = []
        doomed = [_Detaches(seg, detached)]

        def collecting(phase: str, info: dict[str, int]) -> None:
            # A collection started by an allocation of the put's chain index work, under the
            # lock (in Python; in C when it renumbers, a tuple for each of the 8 chunks): its
            # finalizers run there; here one does, for sure.
            if phase == "start" and backend.lock_held():
                doomed.clear()

        threshold = gc.get_threshold()
        gc.callbacks.append(collecting)
        gc.set_threshold(1)  # every few allocations start a collection
        try:
            for value in range(40):
                if detached:
                    break
                # Small tuples come from a free list, which starts no collection: emptied (and
                # the index's tuples kept from going back to it), the C put's own tuples are
                # new allocations, which can start one, as in Python.
                emptied = [(number, value) for number in range(4000)]
                where, moves, _ = backend._chain.hot_state()
                kept = [*where.values(), *moves]
                seg.put(1, value)
                del emptied, kept
        finally:
            gc.set_threshold(*threshold)
            gc.callbacks.remove(collecting)
        assert detached, "no collection ran under the lock"
        assert ipc.shm_stat(shmid).nattch == 1, "the detached handle is still attached"
        assert ipc.semctl_getval(semid, _SEM_USERS) == 1, "it still counts as a semaphore user"
        with pytest.raises(shmfs.SegmentDetached):
            seg.put(1, 1)
        with other.lock(timeout=5):  # the lock was given back
            assert other[1] in range(40)
    finally:
        other.destroy()
