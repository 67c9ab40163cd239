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
    """

    def __init__(self, client: redis.Redis, channel: str, guard: Guard) -> None:
        self._guard = guard
        # Subscribe confirmations are kept, not ignored: drain() stops at the first None, and an
        # ignored message reads as None while real ones may be buffered behind it.
        self._pubsub: Any = client.pubsub()  # type: ignore[no-untyped-call]  # redis-py leaves pubsub() unannotated
        self._pubsub.subscribe(channel)

    def fileno(self) -> int | None:
        """The subscription's socket, or ``None`` (then asyncio waiters poll)."""
        connection = self._pubsub.connection
        # _get_socket() is redis-py's own accessor (private, so a missing one means "poll").
        get_socket = getattr(connection, "_get_socket", None)
        sock = get_socket() if get_socket is not None else None
        return None if sock is None else int(sock.fileno())

    def wait(self, timeout: float) -> None:
        """Sleep until a change is published or ``timeout`` passes."""
        with self._guard:
            if self._pubsub.get_message(timeout=timeout) is not None:
                self._drain()

    def drain(self) -> None:
        """Forget delivered messages."""
        with self._guard:
            self._drain()

    def _drain(self) -> None:
        while self._pubsub.get_message(timeout=0) is not None:
            pass

    def close(self) -> None:
        """Unsubscribe."""
        with contextlib.suppress(Exception):  # closing must not fail the waiter's exit
            self._pubsub.close()
