"""Translating the redis package's errors at the boundary, in one place.

An unreachable server becomes ``BackendUnavailable`` naming the URL (password redacted); the
scripts' error replies become ``SegmentNotFound``, ``LockTimeout`` and ``CorruptSegment``; any
other Redis error a plain ``ShmfsError``.
"""

from __future__ import annotations

from typing import Any

import redis

from shmfs.backends.redis.connection import redacted
from shmfs.errors import (
    BackendUnavailable,
    CorruptSegment,
    LockTimeout,
    SegmentNotFound,
    ShmfsError,
)

__all__ = ["Guard"]


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
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            raise BackendUnavailable(
                f"Redis at {self.url} is unreachable: {exc}", url=self.url
            ) from exc
        if isinstance(exc, redis.ResponseError) and "DESTROYED" in str(exc):
            raise SegmentNotFound(f"segment {self.key} was destroyed", key=self.key) from exc
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
        if isinstance(exc, redis.RedisError):
            raise ShmfsError(f"Redis at {self.url}: {exc}", url=self.url) from exc
