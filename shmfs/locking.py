"""The segment lock: one per segment, shared by threads and processes. The one place portalocker
is imported.

The lock is an exclusive ``flock(2)`` on a file that is never replaced (a segment's ``.segment``
file), taken through portalocker, whose default locker on Linux is ``fcntl.flock``. flock rather
than ``lockf``/``fcntl`` record locks because a record lock silently vanishes when *any*
descriptor of the file is closed in the process (sqlite.org/howtocorrupt.html §2.2), and because
the kernel frees an flock the instant its holder dies, SIGKILL included.

flock locks belong to an open file description, so two threads of one process would both "hold"
it: a ``threading.RLock`` in front gives exclusion between threads and lets the holding thread
re-enter (``with seg.lock(): seg.put(...)``). Only the outermost acquire touches the kernel.

The uncontended path calls the same ``fcntl.flock`` portalocker would, with ``LOCK_NB``:
portalocker's wrapper costs about 5 us per lock/unlock pair against 0.8 us for the bare system
call, on a path every put takes. Contended and timed waits go through ``portalocker.lock``.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable

import portalocker

from shmfs.errors import LockTimeout, ShmfsError

__all__ = ["HoldsSegmentLock", "ReentrantLock", "SegmentLock", "lock_holder_pid"]

# Backoff for timed waits: flock has no timeout of its own, and a blocking flock cannot be
# interrupted from another thread, so timed waits poll. Start short so a lock released within a
# millisecond is picked up at once; cap the interval so a long wait costs little CPU.
_FIRST_POLL = 0.0002
_MAX_POLL = 0.02


class ReentrantLock:
    """A lock exclusive across threads and processes, re-entrant for the holding thread.

    Args:
        name: What the lock guards, for error messages.
        take: Takes the process-level lock within a timeout (``None``: for ever), or raises
            ``LockTimeout``.
        give: Releases the process-level lock.
    """

    def __init__(
        self, name: str, take: Callable[[float | None], None], give: Callable[[], None]
    ) -> None:
        self._name = name
        self._take = take
        self._give = give
        self._thread_lock = threading.RLock()
        self._depth = 0

    @property
    def held(self) -> bool:
        """Whether the calling thread holds the lock."""
        return self._depth > 0 and self._thread_lock._is_owned()  # type: ignore[attr-defined]  # RLock's own ownership test, stable since 3.2

    def acquire(self, timeout: float | None = None) -> None:
        """Take the lock, waiting at most ``timeout`` seconds (``None``: for ever).

        Raises:
            LockTimeout: the lock was not had in time; ``holder_pid`` names the holder if known.
        """
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        got = (
            self._thread_lock.acquire()
            if timeout is None
            else self._thread_lock.acquire(timeout=max(timeout, 0.0))
        )
        if not got:
            raise LockTimeout(
                f"{self._name}: lock not acquired within {timeout} s "
                "(held by another thread of this process)",
                holder_pid=os.getpid(),
                timeout=timeout,
            )
        if self._depth == 0:
            try:
                self._take(None if deadline is None else max(deadline - time.monotonic(), 0.0))
            except BaseException:
                self._thread_lock.release()
                raise
        self._depth += 1

    def try_acquire(self, try_take: Callable[[], bool]) -> bool:
        """Take the lock only if that needs no waiting; ``try_take`` tries the process-level
        lock once. Cheaper than ``acquire(0)``, which reports who holds it."""
        if not self._thread_lock.acquire(blocking=False):
            return False
        if self._depth == 0 and not try_take():
            self._thread_lock.release()
            return False
        self._depth += 1
        return True

    def release(self) -> None:
        """Give the lock back; the process-level lock goes with the outermost release."""
        self._depth -= 1
        try:
            if self._depth == 0:
                self._give()
        finally:
            self._thread_lock.release()


class SegmentLock(ReentrantLock):
    """:class:`ReentrantLock` over an exclusive ``flock`` on an open descriptor.

    Args:
        fd: An open descriptor of a file that is never replaced; the lock does not own it.
        name: What the lock guards, for error messages.
    """

    def __init__(self, fd: int, name: str) -> None:
        super().__init__(name, self._lock_file, self._unlock_file)
        self._fd = fd

    def _unlock_file(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _try_lock_file(self) -> bool:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True

    def try_lock(self) -> bool:
        """Take the lock if it is free right now; whether we did."""
        return self.try_acquire(self._try_lock_file)

    def _lock_file(self, timeout: float | None) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        except OSError as exc:
            raise ShmfsError(f"cannot lock {self._name}: {exc.strerror}") from exc
        try:
            if timeout is None:
                portalocker.lock(self._fd, portalocker.LockFlags.EXCLUSIVE)
                return
            deadline = time.monotonic() + timeout
            poll = _FIRST_POLL
            while True:
                try:
                    portalocker.lock(
                        self._fd,
                        portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING,
                    )
                    return
                except portalocker.AlreadyLocked:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise self._timeout(timeout) from None
                    time.sleep(min(poll, remaining))
                    poll = min(poll * 2, _MAX_POLL)
        except portalocker.LockException as exc:
            raise ShmfsError(f"cannot lock {self._name}: {exc}") from exc

    def _timeout(self, timeout: float | None) -> LockTimeout:
        pid = lock_holder_pid(self._fd)
        holder = f"held by pid {pid}" if pid is not None else "held by another process"
        return LockTimeout(
            f"{self._name}: lock not acquired within {timeout} s ({holder})",
            holder_pid=pid,
            timeout=timeout,
        )


def lock_holder_pid(fd: int) -> int | None:
    """Return the pid holding an flock on ``fd``'s file, from ``/proc/locks``, or ``None``.

    A holder in another PID namespace shows as pid 0 or not at all; we report ``None`` then.
    """
    try:
        st = os.fstat(fd)
        with open("/proc/locks", encoding="ascii") as locks:
            lines = locks.readlines()
    except OSError:
        return None
    # "1: FLOCK  ADVISORY  WRITE 13850 00:1b:6745 0 EOF"; waiters carry "->" and are skipped.
    target = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == target:
            pid = int(fields[4])
            return pid if pid > 0 else None
    return None


class HoldsSegmentLock:
    """Mixin for backends whose segment lock is a :class:`ReentrantLock` in ``_lock``: the
    release and ownership test every such backend has (acquiring differs per backend)."""

    _lock: ReentrantLock | None = None

    def release(self) -> None:
        """Release the segment lock."""
        assert self._lock is not None
        self._lock.release()

    def lock_held(self) -> bool:
        """Whether the calling thread holds the segment lock."""
        return self._lock is not None and self._lock.held
