"""Keeping leases alive: one daemon thread per process renews the leases the process holds.

The redis backend's lock is a lease: a key with an expiry, so that a holder that died on another
host (whose pid nobody here can check) cannot block the others for ever. The expiry must be
short for that to help, yet a critical section (``with seg.lock():`` around user code) may last
any time. So, while a lease is held, this thread extends it every ``period`` seconds: a live
holder keeps its lock however long it holds it, as with ``flock`` on tmpfs, and a dead, stopped
(SIGSTOP, a paused container) or cut-off holder stops renewing and loses it within the expiry.

The holder's own thread cannot renew: it is busy running the critical section. One thread for
all leases, not one per lease: a put takes the lock, and starting a thread costs about 100 us.
Holding or dropping a lease costs a dict operation under a lock; the thread is woken only when
a lease falls due before its next scheduled wake-up, which for leases of one period means only
when it was idle.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Renewer", "renewer"]


@dataclass(slots=True)
class _Lease:
    renew: Callable[[], bool]
    period: float
    due: float


class Renewer:
    """Calls each held lease's ``renew`` every ``period`` seconds until it is dropped."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._leases: dict[str, _Lease] = {}
        self._thread: threading.Thread | None = None
        self._wake_at: float | None = None  # when the thread will next look; None: idle

    def hold(self, name: str, renew: Callable[[], bool], period: float) -> None:
        """Renew lease ``name`` every ``period`` s; ``renew`` returns False once it is lost."""
        due = time.monotonic() + period
        with self._cond:
            self._leases[name] = _Lease(renew, period, due)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="shmfs-lease-renewer", daemon=True
                )
                self._thread.start()
            elif self._wake_at is None or due < self._wake_at:
                self._cond.notify()

    def drop(self, name: str) -> None:
        """Stop renewing lease ``name`` (before releasing it). Idempotent."""
        with self._cond:
            self._leases.pop(name, None)

    def held(self) -> list[str]:
        """The leases being renewed (for tests)."""
        with self._cond:
            return list(self._leases)

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [(name, lease) for name, lease in self._leases.items() if lease.due <= now]
                for _, lease in due:
                    lease.due = now + lease.period
                if not due:
                    self._wake_at = min(
                        (lease.due for lease in self._leases.values()), default=None
                    )
                    self._cond.wait(None if self._wake_at is None else self._wake_at - now)
                    continue
            # Renew outside the lock: it is a network round trip, and hold()/drop() must not wait.
            for name, lease in due:
                try:
                    kept = lease.renew()
                except (
                    Exception
                ):  # a failed renewal is retried next period; the thread must live on
                    kept = True
                if not kept:
                    with self._cond:
                        if self._leases.get(name) is lease:
                            del self._leases[name]


_renewer = Renewer()


def _after_fork() -> None:
    # The parent's thread does not exist in a forked child, and its condition may have been
    # held at the fork: the child starts afresh (the parent's leases are the parent's).
    global _renewer  # noqa: PLW0603  # one renewer per process is the point
    _renewer = Renewer()


os.register_at_fork(after_in_child=_after_fork)


def renewer() -> Renewer:
    """This process's renewer."""
    return _renewer
