"""Waiting for a variable's next value: ``wait``/``watch`` and their asyncio forms.

A waiter registers with the backend (so writers know to wake it), notes the variable's version,
and sleeps on the backend's watcher until the version changes. Nothing spins: a sync waiter sleeps
in ``select`` on the watcher's descriptor, an async waiter hands that descriptor to the event loop.
Even so, waiters re-check at least once a second, so a wake-up lost to an I/O error only delays.

``watch`` yields the latest value each time the variable changes. A reader slower than the writer
sees the newest value, not every intermediate one (values are not queued); a removal is not a
value, so waiters keep waiting through it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final, Protocol

from shmfs.backends import Watcher
from shmfs.errors import WaitTimeout

__all__ = ["AsyncWatch", "Versioned", "Watch", "wait_async", "wait_next"]


class Versioned(Protocol):
    """What waiting uses of a backend (``Segment`` hands it one that reports a detached handle
    as such)."""

    def version(self, index: int) -> object:
        """See :meth:`shmfs.backends.Backend.version`."""

    def watcher(self) -> Watcher:
        """See :meth:`shmfs.backends.Backend.watcher`."""


# Longest sleep between checks of our own, whatever the watcher says.
_RECHECK: Final = 1.0
# Poll interval for backends with no descriptor to wait on.
_POLL: Final = 0.001

Getter = Callable[[int, Any], Any]
_ABSENT: Final[Any] = object()


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + max(timeout, 0.0)


def _remaining(deadline: float | None, index: int, timeout: float | None) -> float:
    if deadline is None:
        return _RECHECK
    left = deadline - time.monotonic()
    if left <= 0:
        raise WaitTimeout(
            f"no new value at index {index} within {timeout:.3g} s", index=index, timeout=timeout
        )
    return min(left, _RECHECK)


def _changed(backend: Versioned, get: Getter, index: int, base: object) -> tuple[Any, object]:
    """``(value, version)`` if ``index`` holds a value newer than ``base``, else
    ``(_ABSENT, version)``. The version is read on both sides of the get, so the value returned
    is never older than the version recorded for it."""
    while True:
        before = backend.version(index)
        if before is None or before == base:
            return _ABSENT, before
        value = get(index, _ABSENT)
        after = backend.version(index)
        if value is not _ABSENT and after == before:
            return value, after
        # Written again (or removed) between our reads: look again rather than pair them wrongly.


def _look(backend: Versioned, get: Getter, index: int, base: object) -> tuple[Any, object]:
    """One look: ``(new value, its version)``, or ``(_ABSENT, the base to keep waiting from)``;
    after a removal that base is ``None``, so whatever is stored next counts as new."""
    value, version = _changed(backend, get, index, base)
    if value is not _ABSENT:
        return value, version
    return _ABSENT, None if version is None else base


def _next(
    backend: Versioned,
    watcher: Watcher,
    get: Getter,
    index: int,
    base: object,
    *,
    timeout: float | None,
) -> tuple[Any, object]:
    deadline = _deadline(timeout)
    while True:
        value, base = _look(backend, get, index, base)
        if value is not _ABSENT:
            return value, base
        watcher.wait(_remaining(deadline, index, timeout))


def wait_next(backend: Versioned, get: Getter, index: int, timeout: float | None) -> Any:
    """Block until ``index`` gets a new value; return it."""
    watcher = backend.watcher()
    try:
        return _next(backend, watcher, get, index, backend.version(index), timeout=timeout)[0]
    finally:
        watcher.close()


class _Registered:
    """A waiter registered, and the variable's version noted, when made: not on the first
    ``next()``, so nothing written after ``watch()`` returns is missed."""

    _watcher: Watcher | None = None  # what close() and __del__ find if __init__ failed

    def __init__(self, backend: Versioned, get: Getter, index: int, timeout: float | None) -> None:
        self._backend, self._get, self._index, self._timeout = backend, get, index, timeout
        self._watcher = backend.watcher()
        try:
            self._base = backend.version(index)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop watching; idempotent."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.close()

    def __del__(self) -> None:
        self.close()


class Watch(_Registered):
    """The iterator ``Segment.watch`` returns; a context manager too."""

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> Any:
        if self._watcher is None:
            raise StopIteration
        value, self._base = _next(
            self._backend,
            self._watcher,
            self._get,
            self._index,
            self._base,
            timeout=self._timeout,
        )
        return value

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _sleep_on(watcher: Watcher, timeout: float) -> None:
    # Imported here: a running event loop has imported it already, and ``import shmfs`` in a
    # program that never awaits (the CLI, a worker process) should not pay ~50 ms for it.
    import asyncio  # noqa: PLC0415

    fd = watcher.fileno()
    if fd is None:
        await asyncio.sleep(min(_POLL, timeout))
        return
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await asyncio.wait_for(ready, timeout)
    except TimeoutError:
        pass
    finally:
        loop.remove_reader(fd)
        watcher.drain()


async def _next_async(
    backend: Versioned,
    watcher: Watcher,
    get: Getter,
    index: int,
    base: object,
    *,
    timeout: float | None,
) -> tuple[Any, object]:
    deadline = _deadline(timeout)
    while True:
        value, base = _look(backend, get, index, base)
        if value is not _ABSENT:
            return value, base
        await _sleep_on(watcher, _remaining(deadline, index, timeout))


async def wait_async(backend: Versioned, get: Getter, index: int, timeout: float | None) -> Any:
    """``wait_next`` for asyncio: the loop polls the watcher's descriptor, no thread is used."""
    watcher = backend.watcher()
    try:
        return (
            await _next_async(backend, watcher, get, index, backend.version(index), timeout=timeout)
        )[0]
    finally:
        watcher.close()


class AsyncWatch(_Registered):
    """The async iterator ``Segment.watch_async`` returns."""

    def __aiter__(self) -> AsyncWatch:
        return self

    async def __anext__(self) -> Any:
        if self._watcher is None:
            raise StopAsyncIteration
        value, self._base = await _next_async(
            self._backend,
            self._watcher,
            self._get,
            self._index,
            self._base,
            timeout=self._timeout,
        )
        return value

    async def aclose(self) -> None:
        """Stop watching (the async generator protocol's name for it)."""
        self.close()
