"""``Cache.memoize``: results computed once for every process, with stampede protection.

When a result is missing, the callers race to take a *lease*: the key's lease slot
(``Cache.transact(..., lease=True)``, which eviction never takes), rewritten with the same locked
read-modify-write as any entry, so exactly one caller gets it. That caller computes and stores
the result; the others watch the result's variable (``Cache.watch``: they sleep in ``select`` and
wake when it is written, within about a millisecond) and return what was stored.

A lease names its holder (host and PID namespace, pid, a random token) and expires after
``lease`` seconds, so a holder that hangs holds no one back for longer than that, and one whose
process died on this host is taken over at once. Waiters look at the lease again every
:data:`WAIT_STEP` seconds even if nothing woke them, which is how they notice a holder that died
or raised without storing anything.

Only the public calls of a cache are used (:class:`Memoizing` lists them), so this module and
``shmfs.cache`` do not import each other.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Final, Protocol, TypeVar

from shmfs.cache.entry import KEEP, MISSING, Entry, check_ttl
from shmfs.cache.keys import call_key
from shmfs.errors import InvalidArgument, WaitTimeout
from shmfs.forking import pid_alive

__all__ = ["WAIT_STEP", "Memoizing", "memoize"]

WAIT_STEP: Final = 0.05
_F = TypeVar("_F", bound=Callable[..., Any])


def _scope() -> str:
    """Where the pid of a lease holder means something: this host and PID namespace."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}:{namespace}"


_SCOPE: Final = _scope()


class _Changes(Iterator[Any], AbstractContextManager[Any], Protocol):
    """What ``Cache.watch`` returns: an iterator that is its own context manager."""


class Memoizing(Protocol):
    """The calls of :class:`shmfs.Cache` that memoize uses (see their docstrings there)."""

    ttl: float | None

    def get(self, key: Any, default: Any = None) -> Any:
        """The value of ``key``'s live entry (a hit), or ``default`` (a miss)."""

    def peek(self, key: Any, default: Any = None) -> Any:
        """The value of ``key``'s live entry, or ``default``, counting nothing."""

    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds."""

    def transact(
        self,
        key: Any,
        change: Callable[[Entry | None, float], tuple[Any, Any]],
        *,
        lease: bool = False,
    ) -> Any:
        """Rewrite ``key``'s entry (or lease) atomically; ``change``'s answer."""

    def watch(self, key: Any, timeout: float | None = None) -> _Changes:
        """Wake on every write of ``key``'s variable."""


def memoize(cache: Memoizing, ttl: float | None, typed: bool, lease: float) -> Callable[[_F], _F]:
    """The decorator behind :meth:`shmfs.Cache.memoize` (see its docstring).

    Raises:
        InvalidArgument: a bad ``ttl`` or ``lease``, or no parentheses after ``memoize``.
    """
    if callable(ttl):
        raise InvalidArgument("use @cache.memoize() with parentheses, as with diskcache")
    life = cache.ttl if ttl is None else check_ttl(ttl)
    if check_ttl(lease) is None:
        raise InvalidArgument(f"lease must be a finite number of seconds > 0, not {lease!r}")

    def decorate(function: _F) -> _F:
        @functools.wraps(function)
        def cached(*args: Any, **kwargs: Any) -> Any:
            key = call_key(function, args, kwargs, typed)
            value = cache.get(key, MISSING)
            if value is MISSING:
                value = _compute_once(cache, key, lambda: function(*args, **kwargs), life, lease)
            return value

        def cache_key(*args: Any, **kwargs: Any) -> tuple[str, str, bytes]:
            return call_key(function, args, kwargs, typed)

        cached.__cache_key__ = cache_key  # type: ignore[attr-defined]  # diskcache's name for it
        return cached  # type: ignore[return-value]  # same signature, by functools.wraps

    return decorate


def _compute_once(
    cache: Memoizing, key: Any, compute: Callable[[], Any], life: float | None, lease: float
) -> Any:
    """Return the result stored under ``key``, computing it if no other process is."""
    token = [_SCOPE, os.getpid(), random.getrandbits(64)]
    take = functools.partial(_take_lease, token, lease)
    # Watch before looking, so a result stored between the look and the sleep still wakes us.
    with cache.watch(key, timeout=WAIT_STEP) as changes:
        while True:
            value = cache.peek(key, MISSING)
            if value is not MISSING:
                return value
            if cache.transact(key, take, lease=True):
                try:
                    # The previous holder may have stored it after our look, before our lease.
                    value = cache.peek(key, MISSING)
                    if value is MISSING:
                        value = compute()
                        cache.set(key, value, float("inf") if life is None else life)
                    return value
                finally:
                    cache.transact(key, functools.partial(_drop_lease, token), lease=True)
            with contextlib.suppress(WaitTimeout):  # look at the lease again: its holder
                next(changes)  # may have died, or raised without storing anything


def _take_lease(token: list[Any], lease: float, old: Entry | None, now: float) -> tuple[bool, Any]:
    """Take the lease if nobody holds a live one, or if its holder died on this host."""
    if old is not None:
        holder = old[1]
        scope, pid = (holder[0], holder[1]) if type(holder) in (list, tuple) else (None, None)
        if scope != _SCOPE or pid_alive(pid):
            return False, KEEP
    return True, (token, now + lease)


def _drop_lease(token: list[Any], old: Entry | None, now: float) -> tuple[None, Any]:
    """Give the lease back if it is still ours (it may have lapsed and been taken over)."""
    if old is not None and list(old[1]) == token:
        return None, None
    return None, KEEP
