"""Single operations on a Redis segment, each one script call (:class:`shmfs.backends.Atomic`).

A put, remove, add, clear or destroy is one ``EVALSHA``: the script checks the explicit lock,
the segment's integrity and the size quota and makes the change, or makes none, in one atomic
step on the server. No lease is taken for them, so there is nothing to release afterwards that
could fail after the change committed: a call raises only when it did not commit, or, when the
connection was lost mid-call, says that it cannot know (``BackendUnavailable.committed is
None``; see :mod:`shmfs.backends.redis.call`).

An ``incr`` of an integer stored by a codec whose integers have one plain form is one script
call too, the addition made on the server (:mod:`shmfs.backends.redis.numbers`), so crowded
counters never retry. Otherwise ``incr``, ``cas`` and ``update`` are optimistic: the segment
computes the new value from a version of the old one and commits it only if the index is still
at that version. This module remembers the last small frame and version it saw per index, so a
handle that keeps updating one index does so in one round trip; a stale memory costs one more
(the failed commit answers with the current value).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import redis

from shmfs.backends import Committed, Expect, segment_full
from shmfs.backends.redis import numbers, scripts
from shmfs.backends.redis.call import Script, run
from shmfs.backends.redis.guard import Guard
from shmfs.backends.redis.lease import Lease
from shmfs.errors import InvalidArgument

__all__ = ["Operations"]

WRITE, WRITE_MANY, REMOVE, CLEAR, DESTROY, PEEK = (
    Script(scripts.WRITE),
    Script(scripts.WRITE_MANY),
    Script(scripts.REMOVE),
    Script(scripts.CLEAR),
    Script(scripts.DESTROY),
    Script(scripts.PEEK),
)
ADD_INT: Final = {codec: Script(source) for codec, source in scripts.ADD_INT.items()}

# Remembered frames are small (counters, flags), and few: a bound on what a handle keeps.
_SEEN_BYTES: Final = 2048
_SEEN_ENTRIES: Final = 512


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


class Operations:
    """The :class:`~shmfs.backends.Atomic` of one redis backend handle."""

    def __init__(
        self,
        key: int,
        *,
        keys: list[str],
        guard: Guard,
        lease: Lease,
        client: Callable[[], redis.Redis],
        token: Callable[[], str],
        size: Callable[[], int],
    ) -> None:
        self._key = key
        self._keys = keys
        self._peek_keys = keys[1:4]
        self._guard = guard
        self._url = guard.url
        self._lease = lease
        self._client = client
        self._token = token
        self._size = size
        self._seen: dict[int, tuple[object, bytes | None]] = {}

    def _remember(self, index: int, version: object, frame: bytes | None) -> None:
        seen = self._seen
        if frame is not None and len(frame) > _SEEN_BYTES:
            seen.pop(index, None)
            return
        if len(seen) >= _SEEN_ENTRIES and index not in seen:
            seen.clear()
        seen[index] = (version, frame)

    def _call(
        self, script: Script, args: list[Any], timeout: float | None, *, changes: bool
    ) -> Any:
        """Run ``script`` with the gate's token, waiting out another holder's lock."""
        waiter = None
        while True:
            token = self._token()
            with self._guard:
                reply = run(
                    self._client(), self._url, script, self._keys, [token, *args], changes=changes
                )
            if type(reply) is int or reply[0] != -1:  # an int: an incr's new value
                return reply
            if waiter is None:
                waiter = self._lease.waiter(timeout)
            waiter.pause(_bytes(reply[1]).decode(errors="replace"))

    def commit(self, index: int, data: bytes, expect: Expect, timeout: float | None) -> Committed:
        """See :class:`~shmfs.backends.Atomic`."""
        mode, expected = expect
        if mode not in {"any", "absent", "version", "bytes"}:
            raise InvalidArgument(f"unknown expectation {mode!r}")
        arg = b"" if expected is None else expected
        reply = self._call(WRITE, [index, data, mode, arg], timeout, changes=True)
        status = reply[0]
        if status == 2:
            raise segment_full(self._key, index, len(data), self._size(), int(reply[1]))
        version = _bytes(reply[1]).decode()
        if status == 1:
            self._remember(index, version, data)
            return Committed(True, version)
        current = reply[2] if len(reply) > 2 else None
        self._remember(index, version, current)
        return Committed(False, version, current)

    def add_int(
        self,
        index: int,
        delta: int,
        default: int,
        *,
        codec: int,
        pickles: bool,
        timeout: float | None,
    ) -> int | tuple[object, bytes | None] | None:
        """See :class:`~shmfs.backends.Atomic`: one script call whatever other writers do."""
        script = ADD_INT.get(codec)
        if (
            script is None
            or not -numbers.LIMIT < delta < numbers.LIMIT
            or not -numbers.LIMIT < default < numbers.LIMIT
        ):
            return None
        self._seen.pop(index, None)  # the new frame is built on the server, and not sent back
        args = [index, delta, default, "1" if pickles else ""]
        reply = self._call(script, args, timeout, changes=True)
        if type(reply) is int:
            return reply
        status = reply[0]
        if status == 2:
            raise segment_full(self._key, index, int(reply[2]), self._size(), int(reply[1]))
        version = _bytes(reply[1]).decode()
        current = reply[2] if len(reply) > 2 else None
        self._remember(index, version, current)
        return version, current

    def commit_many(self, items: list[tuple[int, bytes]], timeout: float | None) -> None:
        """See :class:`~shmfs.backends.Atomic`: one script call, the gate and quota of
        ``commit``'s."""
        args: list[Any] = []
        for index, data in items:
            self._seen.pop(index, None)  # their new versions are not asked for
            args += (index, data)
        reply = self._call(WRITE_MANY, args, timeout, changes=True)
        if reply[0] == 2:
            needed = sum(len(data) for _, data in items)
            raise segment_full(self._key, items[0][0], needed, self._size(), int(reply[1]))

    def discard(self, index: int, timeout: float | None) -> bool:
        """See :class:`~shmfs.backends.Atomic`."""
        self._seen.pop(index, None)
        return bool(self._call(REMOVE, [index], timeout, changes=True)[0])

    def clear(self, timeout: float | None) -> None:
        """See :class:`~shmfs.backends.Atomic`."""
        self._seen.clear()
        self._call(CLEAR, [], timeout, changes=True)

    def destroy(self, timeout: float | None) -> None:
        """See :class:`~shmfs.backends.Atomic`."""
        self._seen.clear()
        self._call(DESTROY, [], timeout, changes=True)

    def seen(self, index: int) -> tuple[object, bytes | None] | None:
        """See :class:`~shmfs.backends.Atomic`."""
        return self._seen.get(index)

    def peek(self, index: int) -> tuple[object, bytes | None]:
        """See :class:`~shmfs.backends.Atomic`."""
        with self._guard:
            reply = run(self._client(), self._url, PEEK, self._peek_keys, [index], changes=False)
        version = _bytes(reply[0]).decode()
        frame = reply[1] if len(reply) > 1 else None
        self._remember(index, version, frame)
        return version, frame
