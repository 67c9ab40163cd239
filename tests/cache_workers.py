"""Child-process targets for the Cache tests (spawned, so they live in an importable module).

Each takes the cache's reference (key, size, backend, root) and hands results back as data.
"""

from __future__ import annotations

import os
from typing import Any

import shmfs


def open_cache(ref: dict[str, Any], **kwargs: Any) -> shmfs.Cache:
    return shmfs.Cache(ref["key"], ref["size"], backend=ref["backend"], root=ref["root"], **kwargs)


def memo_square(
    ref: dict[str, Any], counter_dir: str, value: int, calling: Any, release: Any
) -> int:
    """Call a memoized function; each run of its body leaves a file in ``counter_dir``, and
    the body holds until ``release`` is set, so the other callers arrive while it runs."""
    with open_cache(ref) as cache:

        @cache.memoize()
        def square(x: int) -> int:
            with open(os.path.join(counter_dir, f"ran-{os.getpid()}"), "w"):
                pass
            assert release.wait(60), "the test never released the computation"
            return x * x

        calling.put(os.getpid())
        return square(value)


def hold_lease(ref: dict[str, Any], value: int, computing: Any) -> None:
    """Start computing a memoized result and never finish (the test kills us)."""
    with open_cache(ref) as cache:

        @cache.memoize(lease=60)
        def square(x: int) -> int:
            computing.set()
            while True:
                os.pause()

        square(value)


def count_and_incr(ref: dict[str, Any], times: int, start: Any) -> int:
    """Increment a shared counter ``times`` times, with one hit and one miss each time."""
    with open_cache(ref) as cache:
        assert start.wait(30)
        for _ in range(times):
            cache.incr("counter")
            assert cache.get("present") == "here"
            assert cache.get(f"absent-{os.getpid()}") is None
    return times


def fill_cache(ref: dict[str, Any], prefix: str, count: int, hot: list[str], start: Any) -> int:
    """Write ``count`` fresh 1 KiB entries, reading the ``hot`` keys after each write."""
    with open_cache(ref) as cache:
        assert start.wait(30)
        for number in range(count):
            cache.set(f"{prefix}-{number}", b"x" * 1024)
            for key in hot:
                assert cache.get(key) is not None, f"{key} was evicted"
    return count
