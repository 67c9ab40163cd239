"""Waiting on a Redis segment: a subscription to its change channel."""

from __future__ import annotations

import contextlib
from typing import Any

import redis

from shmfs.backends.redis.guard import Guard

__all__ = ["PubSubWatcher"]


class PubSubWatcher:
    """A subscription to a segment's change channel.

    ``fileno()`` is the subscription's socket, so asyncio waiters sleep in the event loop
    instead of polling. That is sound because ``drain()`` reads until redis-py has nothing
    buffered: after it, any new message makes the socket readable again.

    A subscription whose connection is lost (a restart, a failover) is made again on the next
    ``wait()`` or ``drain()``, which then returns at once: a change published meanwhile was
    missed, and the waiter looks at the variable again. Reached through Sentinels, it is made
    again too once they name another master, since the old one, still up, hears nothing of
    the new one's writes.
    """

    def __init__(self, client: redis.Redis, channel: str, guard: Guard) -> None:
        self._client = client
        self._channel = channel
        self._guard = guard
        self._pubsub: Any = None
        self._subscribe()

    def _subscribe(self) -> None:
        """Subscribe on a new connection (the old one, if any, is closed)."""
        old, self._pubsub = self._pubsub, None
        if old is not None:
            with contextlib.suppress(Exception):  # it is broken already
                old.close()
        # Subscribe confirmations are kept, not ignored: drain() stops at the first None, and an
        # ignored message reads as None while real ones may be buffered behind it.
        pubsub: Any = self._client.pubsub()  # type: ignore[no-untyped-call]  # redis-py leaves pubsub() unannotated
        try:
            pubsub.subscribe(self._channel)
        except BaseException:
            with contextlib.suppress(Exception):
                pubsub.close()
            raise
        self._pubsub = pubsub

    def _current(self) -> bool:
        """Whether the subscription is on a live connection to the server to listen to."""
        connection = None if self._pubsub is None else self._pubsub.connection
        if connection is None:
            return False
        pool = getattr(self._client, "connection_pool", None)  # a cluster client has none
        current = getattr(pool, "current", None)  # a Sentinels' pool (sentinel.py)
        return current is None or bool(current(connection))

    def fileno(self) -> int | None:
        """The subscription's socket, or ``None`` (then asyncio waiters poll)."""
        connection = None if self._pubsub is None else self._pubsub.connection
        # _get_socket() is redis-py's own accessor (private, so a missing one means "poll").
        get_socket = getattr(connection, "_get_socket", None)
        sock = get_socket() if get_socket is not None else None
        return None if sock is None else int(sock.fileno())

    def wait(self, timeout: float) -> None:
        """Sleep until a change is published or ``timeout`` passes."""
        with self._guard:
            if not self._current():
                self._subscribe()
                return
            try:
                if self._pubsub.get_message(timeout=timeout) is not None:
                    self._drain()
            except (redis.ConnectionError, redis.TimeoutError):
                self._subscribe()

    def drain(self) -> None:
        """Forget delivered messages (asyncio waiters call it after each sleep, so it, too,
        makes the subscription again where ``wait()`` would)."""
        with self._guard:
            if not self._current():
                self._subscribe()
                return
            try:
                self._drain()
            except (redis.ConnectionError, redis.TimeoutError):
                self._subscribe()

    def _drain(self) -> None:
        while self._pubsub.get_message(timeout=0) is not None:
            pass

    def close(self) -> None:
        """Unsubscribe."""
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):  # closing must not fail the waiter's exit
                pubsub.close()
