"""How a :class:`~shmfs.segment.Segment` call reaches its backend: the segment lock held for one
act (``with seg.lock():`` and the segment's own lock-then-act), and what waiting uses of a
backend; each says a detached or destroyed handle as such.

A call that fails because another thread (or a finalizer) detached or destroyed the handle
while it ran raises what a call after that would: the segment gives these helpers its
``say_closed(exc)``, which raises ``SegmentDetached`` or ``SegmentNotFound`` from ``exc`` when
the handle is closed and returns otherwise (the helper then raises ``exc`` itself).
"""

from __future__ import annotations

from collections.abc import Callable

from shmfs.backends import Backend, Watcher

__all__ = ["Holding", "Locked", "SayClosed", "Watched"]

#: ``say_closed(exc)``: raise the closed handle's error from ``exc`` if the handle is closed.
SayClosed = Callable[[Exception], None]


class Locked:
    """``with seg.lock():`` — a plain class, since a generator-based context costs ~1 us.

    The release goes to the backend whose lock was taken, even if the handle was detached in
    the block: a backend closes only once its lock is let go (``shmfs.locking``)."""

    __slots__ = ("_backend", "_say_closed", "_timeout")

    def __init__(self, backend: Backend, timeout: float | None, say_closed: SayClosed) -> None:
        self._backend = backend
        self._timeout = timeout
        self._say_closed = say_closed

    def __enter__(self) -> None:
        try:
            self._backend.acquire(self._timeout)
        except Exception as exc:
            self._say_closed(exc)
            raise

    def __exit__(self, *exc: object) -> None:
        self._backend.release()


class Holding(Locked):
    """The segment's own lock-then-act: ``with segment._holding() as backend:`` (the backend is
    kept out of the public ``lock()``)."""

    __slots__ = ()

    def __enter__(self) -> Backend:  # type: ignore[override]  # the private form gives the backend
        try:
            self._backend.acquire(self._timeout)
        except Exception as exc:
            self._say_closed(exc)
            raise
        return self._backend


class Watched:
    """What ``shmfs.waiting`` uses of a backend (a watch outlives the call that made it)."""

    __slots__ = ("_backend", "_say_closed")

    def __init__(self, backend: Backend, say_closed: SayClosed) -> None:
        self._backend = backend
        self._say_closed = say_closed

    def version(self, index: int) -> object:
        """The backend's :meth:`~shmfs.backends.Backend.version`."""
        try:
            return self._backend.version(index)
        except Exception as exc:
            self._say_closed(exc)
            raise

    def watcher(self) -> Watcher:
        """The backend's :meth:`~shmfs.backends.Backend.watcher`, whose waits say a closed
        handle as such too."""
        try:
            return _WatcherSaysClosed(self._backend.watcher(), self._say_closed)
        except Exception as exc:
            self._say_closed(exc)
            raise


class _WatcherSaysClosed:
    """A :class:`~shmfs.backends.Watcher` whose wait, cut short by a detach in another thread
    (a Redis subscription's socket closed under it, say), raises ``SegmentDetached``."""

    __slots__ = ("_say_closed", "_watcher")

    def __init__(self, watcher: Watcher, say_closed: SayClosed) -> None:
        self._watcher = watcher
        self._say_closed = say_closed

    def fileno(self) -> int | None:
        return self._watcher.fileno()

    def wait(self, timeout: float) -> None:
        try:
            self._watcher.wait(timeout)
        except Exception as exc:
            self._say_closed(exc)
            raise

    def drain(self) -> None:
        try:
            self._watcher.drain()
        except Exception as exc:
            self._say_closed(exc)
            raise

    def close(self) -> None:
        self._watcher.close()
