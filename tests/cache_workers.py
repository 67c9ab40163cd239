"""Child-process targets for the Cache tests."""

from __future__ import annotations

import os
import time
from typing import Any

import shmfs


def open_cache(ref: dict[str, Any]) -> shmfs.Cache:
    return shmfs.Cache(ref["key"], ref["size"], backend=ref["backend"], root=ref["root"])


def slow_square(ref: dict[str, Any], counter_dir: str, value: int, start: Any) -> int:
    """Call a memoized slow function; each execution of its body leaves a file behind."""
    with open_cache(ref) as cache:

        @cache.memoize()
        def square(x: int) -> int:
            with open(os.path.join(counter_dir, f"ran-{os.getpid()}"), "w"):
                pass
            time.sleep(0.3)  # slow enough that every caller arrives while it runs
            return x * x

        start.wait(30)
        return square(value)


def incr_cache(ref: dict[str, Any], times: int, start: Any) -> int:
    with open_cache(ref) as cache:
        start.wait(30)
        for _ in range(times):
            cache.incr("counter")
    return times


def fill_cache(ref: dict[str, Any], prefix: str, count: int, hot: list[str], start: Any) -> int:
    """Write ``count`` fresh 1 KiB entries, reading the ``hot`` keys after each write."""
    with open_cache(ref) as cache:
        start.wait(30)
        for key in hot:  # they are in use from the start, as hot entries are
            cache.get(key)
        for number in range(count):
            cache.set(f"{prefix}-{number}", b"x" * 1024)
            for key in hot:
                cache.get(key)
    return count
