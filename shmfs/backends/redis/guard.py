"""Translating the redis package's errors at the boundary, in one place.

An unreachable server becomes ``BackendUnavailable`` naming the URL (password redacted), as
does a master that refuses writes for want of replicas in sync (``min-replicas-to-write``), a
refused password says that authentication failed, and a server at its ``maxmemory`` makes
``SegmentFull``; a cluster node reached by a plain URL that no longer serves the segment says
to name the cluster instead; the scripts' error replies become ``SegmentNotFound``,
``LockTimeout`` and ``CorruptSegment``; any other Redis error a plain ``ShmfsError``.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.exceptions import AskError, MovedError

from shmfs.backends.redis.connection import redacted
from shmfs.errors import (
    BackendUnavailable,
    CorruptSegment,
    LockTimeout,
    SegmentFull,
    SegmentNotFound,
    ShmfsError,
)

__all__ = ["Guard", "evicted", "gone"]


def gone(key: int) -> SegmentNotFound:
    """The error for a segment whose keys are not on the server."""
    return SegmentNotFound(
        f"segment {key} is not on the server: destroyed, or lost when the server restarted "
        "without persistence (appendonly or save)",
        key=key,
    )


def evicted(key: int, what: str) -> CorruptSegment:
    """The error for a segment the server evicted part of."""
    return CorruptSegment(
        f"segment {key}: its {what} are gone from the server while the rest remains: evicted "
        "at maxmemory (set maxmemory-policy noeviction); destroy the segment to start afresh",
        key=key,
    )


class Guard:
    """``with guard:`` around calls to the server: raises shmfs's errors for redis's."""

    def __init__(self, url: str, key: int | None = None, expiry: float = 0.0) -> None:
        self.url = redacted(url)
        self.key = key
        self.expiry = expiry

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if isinstance(exc, redis.AuthenticationError):
            raise BackendUnavailable(
                f"Redis at {self.url}: authentication failed (check the password or user in "
                "the URL)",
                url=self.url,
                committed=False,
            ) from exc
        if isinstance(exc, redis.OutOfMemoryError):
            raise SegmentFull(
                f"segment {self.key}: Redis at {self.url} is at its maxmemory limit and refused "
                "the write, so nothing was written; raise maxmemory, or free memory (remove, "
                "clear and destroy still work at the limit)",
                key=self.key,
                url=self.url,
                maxmemory=True,
            ) from exc
        if isinstance(exc, redis.ResponseError) and str(exc).startswith("NOREPLICAS"):
            raise BackendUnavailable(
                f"Redis at {self.url} refused the write: fewer replicas are in sync with it than "
                f"its min-replicas-to-write asks, so nothing was written ({exc})",
                url=self.url,
                committed=False,
            ) from exc
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            raise BackendUnavailable(
                f"Redis at {self.url} is unreachable: {exc}", url=self.url
            ) from exc
        if isinstance(exc, redis.ResponseError) and "DESTROYED" in str(exc):
            raise gone(self.key if self.key is not None else 0) from exc
        if isinstance(exc, redis.ResponseError) and "EVICTED" in str(exc):
            raise evicted(self.key or 0, str(exc).split("EVICTED", 1)[1].strip()) from exc
        if isinstance(exc, redis.ResponseError) and "LOST_LOCK" in str(exc):
            raise LockTimeout(
                f"segment {self.key}: this process lost the segment lock (it expired after "
                f"lock_expiry={self.expiry:g} s without renewal: was the process stopped or "
                "cut off from the server?); another process may have taken it, so nothing was "
                "written",
                key=self.key,
                holder_pid=None,
                timeout=self.expiry,
            ) from exc
        if isinstance(exc, redis.ResponseError) and "CORRUPT" in str(exc):
            raise CorruptSegment(
                f"segment {self.key}: damaged metadata on the server (size or used is not a "
                "number)",
                key=self.key,
            ) from exc
        if isinstance(exc, (MovedError, AskError)):
            # A cluster client follows these (call.py); a plain URL of one node cannot.
            raise ShmfsError(
                f"Redis at {self.url} is a cluster node that does not serve "
                f"{'this' if self.key is None else f'segment {self.key}'}'s hash slot (now "
                f"at {exc}): name the cluster with a redis+cluster:// URL",
                url=self.url,
            ) from exc
        if isinstance(exc, redis.RedisError):
            raise ShmfsError(f"Redis at {self.url}: {exc}", url=self.url) from exc
