"""``python -m bench.batch``: a ``get_many`` of 100 variables against one ``get``, per backend.

Each backend's segment holds 100 variables of 100-char strings; ``get_many`` of all of them and
``get`` of one are timed in interleaved rounds (:func:`bench.redis_compare.interleaved`), so a
noisy neighbour moves both alike and the ratio stands. Redis runs on a server of its own, on a
unix socket. :func:`bench.targets.batch_rows` turns the figures into target rows; the full
``python -m bench`` run includes them.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
from collections.abc import Callable
from typing import Any

import shmfs
from bench.redis_compare import interleaved
from bench.redis_server import RedisServer, ServerError
from bench.scratch import Scratch
from bench.targets import batch_rows
from bench.timing import Stats

VARIABLES = 100
VALUE = "x" * 100

Progress = Callable[[str], None]


def _where(scratch: Scratch, backend: str) -> tuple[int, str | None]:
    """The key and root a backend's segment gets in this run (redis: a server of its own)."""
    if backend == "tmpfs":
        root = scratch.shm_path("batch")
        os.mkdir(root, 0o700)
        return 1, root
    if backend == "sysv":
        return scratch.sysv_key(), None
    directory = scratch.tmp_path("redis")
    os.mkdir(directory, 0o700)
    server = RedisServer.start(directory)
    scratch.on_close("the batch bench's redis-server", server.stop)
    return 1, server.url


def measure(
    scratch: Scratch, progress: Progress, *, batch: int = 200, batches: int = 10
) -> dict[str, dict[str, Stats] | str]:
    """``{backend: {"get": Stats, "get_many": Stats}}``, or why a backend was not measured."""
    results: dict[str, dict[str, Stats] | str] = {}
    for backend in ("tmpfs", "sysv", "redis"):
        progress(f"batch calls: {backend}")
        try:
            key, root = _where(scratch, backend)
            seg = shmfs.attach(key, 1 << 20, backend=backend, root=root)
        except (shmfs.ShmfsError, ServerError, OSError) as exc:
            results[backend] = f"not measured: {exc}"
            continue
        try:
            indexes = list(range(VARIABLES))
            seg.put_many(dict.fromkeys(indexes, VALUE))
            calls: dict[str, Callable[[], object]] = {
                "get": functools.partial(seg.get, 50),
                "get_many": functools.partial(seg.get_many, indexes),
            }
            raw = _raw_client(root) if backend == "redis" else None
            if raw is not None:
                # The floor: redis-py's own HGET and HMGET of the same hash, same socket.
                names = f"shmfs:{{{key}}}:vars"
                calls["HGET"] = functools.partial(raw.hget, names, "50")
                calls["HMGET"] = functools.partial(raw.hmget, names, indexes)
            timed = interleaved(calls, batch, batches)
            results[backend] = {"get": timed["get"], "get_many": timed["get_many"]}
            if raw is not None:
                results["redis-py"] = {"get": timed["HGET"], "get_many": timed["HMGET"]}
                raw.close()
        finally:
            seg.destroy()
    return results


def _raw_client(url: str | None) -> Any:
    """A redis-py client on the server at ``url`` (``unix://...``)."""
    import redis  # noqa: PLC0415  # only where the redis backend is measured

    return redis.Redis.from_url(str(url))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__)
    parser.add_argument("--batch", type=int, default=200, help="calls per round")
    parser.add_argument("--batches", type=int, default=10, help="rounds")
    args = parser.parse_args(argv)
    with Scratch() as scratch:
        results = measure(
            scratch,
            lambda line: print(line, file=sys.stderr),
            batch=args.batch,
            batches=args.batches,
        )
    print(
        f"{platform.node()}: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at "
        f"the end; Python {platform.python_version()}; {VARIABLES} variables of "
        f"{len(VALUE)}-char str"
    )
    figures: dict[str, Any] = results
    for row in batch_rows(figures):
        print(f"{row.verdict:>4}  {row.target}: {row.measured}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
