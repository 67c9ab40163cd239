"""Worker for ``python -m bench.redis_compare --processes N``: mixed get/put/incr for a while.

Each worker runs in its own process (spawned, so it lives in a module), against either raw
redis-py or shmfs-on-redis, on variables every worker shares: a get of one, a put of another,
an incr of a third, in turn. It reports how many operations it made and its put latencies.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["KEY", "mixed"]

KEY = 0x5EB43


def mixed(kind: str, url: str, socket: str, seconds: float, start_at: float) -> dict[str, Any]:
    """Run ``kind`` ("raw" or "shmfs") until ``seconds`` after the wall-clock ``start_at``."""
    import redis  # noqa: PLC0415  # only the bench's peers need it

    import shmfs  # noqa: PLC0415  # likewise, in the child

    value = "x" * 100
    if kind == "raw":
        client = redis.Redis(unix_socket_path=socket)
        frame = client.get("raw") or b""
        ops = (
            lambda: client.get("raw"),
            lambda: client.set("raw2", frame),
            lambda: client.incr("n"),
        )
        closing = client.close
    else:
        seg = shmfs.attach(KEY, backend="redis", root=url)
        ops = (lambda: seg.get(1), lambda: seg.put(3, value), lambda: seg.incr(2))
        closing = seg.detach
    puts: list[float] = []
    made = 0
    try:
        while time.time() < start_at:
            time.sleep(0.001)  # everyone starts together
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            for number, op in enumerate(ops):
                began = time.perf_counter()
                op()
                if number == 1:
                    puts.append((time.perf_counter() - began) * 1e6)
            made += 3
    finally:
        closing()
    return {"ops": made, "puts": puts}
