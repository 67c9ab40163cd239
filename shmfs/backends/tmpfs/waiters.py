"""Waiters: processes sleeping in ``watch``/``wait`` until a variable changes.

Writes through a mapping raise no inotify event, so a writer that sees the metadata's WAITERS
count non-zero writes the segment's ``.notify`` file, which waiters watch (``shmfs.notify``).
The waiters' pids are kept in a table in the metadata, so that waiters that died are dropped
and writers stop paying for the notification once nobody waits.
"""

from __future__ import annotations

import contextlib
import os
from typing import Protocol

from shmfs.backends.tmpfs import segdir as sd
from shmfs.errors import ShmfsError
from shmfs.forking import pid_alive
from shmfs.notify import FileWatch

__all__ = ["TmpfsWatcher", "set_waiter"]


def set_waiter(meta: memoryview, pid: int, *, register: bool) -> None:
    """Add or remove ``pid`` in the waiter table, dropping waiters that died. Lock held.

    ``WAITERS`` counts the table's entries plus any waiters beyond its slots, which are counted
    without a pid and so never pruned.
    """
    table = sd.WAITER_TABLE
    overflow = max(meta[sd.WAITERS] - sum(1 for word in table if meta[word]), 0)
    for word in table:
        if meta[word] and not pid_alive(meta[word]):
            meta[word] = 0
    if register:
        free = next((word for word in table if not meta[word]), None)
        if free is None:
            overflow += 1
        else:
            meta[free] = pid
    else:
        mine = next((word for word in table if meta[word] == pid), None)
        if mine is None:
            overflow = max(overflow - 1, 0)
        else:
            meta[mine] = 0
    meta[sd.WAITERS] = overflow + sum(1 for word in table if meta[word])


class _Waited(Protocol):
    """What a watcher needs of its backend."""

    @property
    def dir_fd(self) -> int: ...

    def is_open(self) -> bool: ...

    def register_waiter(self, pid: int, *, register: bool) -> None: ...


class TmpfsWatcher:
    """A waiter on a tmpfs segment: listed in the metadata so writers notify, and watching
    ``.notify``."""

    def __init__(self, backend: _Waited) -> None:
        self._backend: _Waited | None = None
        self._watch = FileWatch(backend.dir_fd, sd.NOTIFY_NAME)
        try:
            backend.register_waiter(os.getpid(), register=True)
        except BaseException:
            self._watch.close()
            raise
        self._backend = backend

    def fileno(self) -> int | None:
        """The inotify descriptor."""
        return self._watch.fileno()

    def wait(self, timeout: float) -> None:
        """Sleep until ``.notify`` is written or ``timeout`` passes."""
        self._watch.wait(timeout)

    def drain(self) -> None:
        """Forget delivered wake-ups."""
        self._watch.drain()

    def close(self) -> None:
        """Leave the waiter table and stop watching. Idempotent."""
        backend, self._backend = self._backend, None
        self._watch.close()
        if backend is None or not backend.is_open():
            return  # the handle was closed (or the segment destroyed) first: nothing to undo
        with contextlib.suppress(ShmfsError):
            backend.register_waiter(os.getpid(), register=False)
