"""Through the frameworks: ``cache.get`` and ``cache.set`` by Django's and cachelib's own cache
APIs, shmfs's backends (``shmfs.contrib``) against the caches those frameworks ship.

Django: ``shmfs.contrib.django.ShmfsCache`` on tmpfs, sysv and redis against ``LocMemCache``
(private to each process), ``FileBasedCache`` (its directory on /dev/shm) and ``RedisCache``
(redis-py, a redis-server of ours on a unix socket). cachelib (Flask-Caching's backends):
``shmfs.contrib.cachelib.ShmfsCache`` against ``SimpleCache``, ``FileSystemCache`` (on /dev/shm)
and ``RedisCache``, the same way. The workload is what a web worker does most: a get that hits
and a set that replaces, of a small dict, over 100 keys in turn. Each case is timed call by call
(``bench.timing.measure``), the systems of a framework in turn, round after round; the best
round's median counts (the same rule for every system, so what other processes do to the
machine counts less). Everything is from this run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from itertools import cycle
from typing import Any

import shmfs
from bench.peers.redis import serve
from bench.scratch import Scratch
from bench.system import Unavailable, import_peer
from bench.timing import Stats, measure

__all__ = ["FRAMEWORK_PEERS", "SHMFS_TMPFS", "frameworks_compare"]

Progress = Callable[[str], None]
VALUE = {"user": 42, "name": "alice", "roles": ["admin", "dev"]}
KEYS = [f"user:{n}:profile" for n in range(100)]
SHMFS_TMPFS = "shmfs tmpfs"
#: Per framework: the cache of its own in one process, on files, and on Redis.
FRAMEWORK_PEERS = {
    "django": ("LocMemCache", "FileBasedCache", "RedisCache"),
    "cachelib": ("SimpleCache", "FileSystemCache", "RedisCache"),
}
SIZE = 64 * 2**20


def _destroyer(key: int, backend: str, options: dict[str, Any]) -> Callable[[], None]:
    """Removes the cache at the end of the run, whatever became of the handles on it."""
    return lambda: shmfs.attach(key, backend=backend, root=options.get("root")).destroy()


def _django(scratch: Scratch, redis_url: str | None) -> Iterator[tuple[str, Any]]:
    import_peer("django", "pip install django")
    from django.core.cache.backends.filebased import FileBasedCache  # noqa: PLC0415
    from django.core.cache.backends.locmem import LocMemCache  # noqa: PLC0415
    from django.core.cache.backends.redis import RedisCache  # noqa: PLC0415

    from shmfs.contrib.django import ShmfsCache  # noqa: PLC0415

    def shmfs_backend(backend: str, **options: Any) -> Any:
        key = scratch.sysv_key()  # a key of the run's: removed at the end whatever happens
        scratch.on_close(f"Django's {backend} cache", _destroyer(key, backend, options))
        return ShmfsCache(key, {"OPTIONS": {"size": SIZE, "backend": backend, **options}})

    yield SHMFS_TMPFS, shmfs_backend("tmpfs", root=scratch.shm_path("django"))
    yield "shmfs sysv", shmfs_backend("sysv")
    if redis_url is not None:
        yield "shmfs redis", shmfs_backend("redis", root=redis_url)
    yield "LocMemCache", LocMemCache("bench", {})
    yield "FileBasedCache", FileBasedCache(scratch.shm_path("django-files"), {})
    if redis_url is not None:
        yield "RedisCache", RedisCache(redis_url, {})


def _cachelib(scratch: Scratch, redis_url: str | None) -> Iterator[tuple[str, Any]]:
    cachelib = import_peer("cachelib", "pip install cachelib")

    from shmfs.contrib.cachelib import ShmfsCache  # noqa: PLC0415

    def shmfs_backend(backend: str, **options: Any) -> Any:
        key = scratch.sysv_key()
        scratch.on_close(f"cachelib's {backend} cache", _destroyer(key, backend, options))
        return ShmfsCache(key, size=SIZE, backend=backend, **options)

    yield SHMFS_TMPFS, shmfs_backend("tmpfs", root=scratch.shm_path("cachelib"))
    yield "shmfs sysv", shmfs_backend("sysv")
    if redis_url is not None:
        yield "shmfs redis", shmfs_backend("redis", root=redis_url)
    yield "SimpleCache", cachelib.SimpleCache()
    yield "FileSystemCache", cachelib.FileSystemCache(scratch.shm_path("cachelib-files"))
    if redis_url is not None:
        redis = import_peer("redis", "pip install redis")
        client = redis.Redis(unix_socket_path=redis_url.removeprefix("unix://"))
        scratch.on_close("cachelib's redis client", client.close)
        yield "RedisCache", cachelib.RedisCache(host=client)


def _cases(cache: Any) -> dict[str, Callable[[], object]]:
    for key in KEYS:
        cache.set(key, VALUE)
    reads, writes = cycle(KEYS), cycle(KEYS)
    get, set_ = cache.get, cache.set
    return {"get": lambda: get(next(reads)), "set": lambda: set_(next(writes), VALUE)}


def frameworks_compare(
    scratch: Scratch, progress: Progress, *, rounds: int, batch: int, batches: int
) -> dict[str, Any]:
    """``{"results": {framework: {system: {"get": Stats, "set": Stats}}}, "unavailable": {...}}``:
    µs per ``cache.get`` (a hit) and ``cache.set`` through each framework's cache API."""
    unavailable: dict[str, str] = {}
    redis_url: str | None = None
    try:
        redis_url = serve(scratch).url
    except Unavailable as exc:
        unavailable["redis"] = str(exc)
    results: dict[str, dict[str, dict[str, Stats]]] = {}
    for framework, systems in (("django", _django), ("cachelib", _cachelib)):
        try:
            caches = dict(systems(scratch, redis_url))
        except Unavailable as exc:
            unavailable[framework] = str(exc)
            continue
        cases = {name: _cases(cache) for name, cache in caches.items()}
        best: dict[str, dict[str, Stats]] = {name: {} for name in cases}
        for _ in range(rounds):
            for name, ops in cases.items():
                for op, call in ops.items():
                    timing = measure(call, batch=batch, batches=batches)
                    if op not in best[name] or timing.median < best[name][op].median:
                        best[name][op] = timing
        for cache in caches.values():
            with contextlib.suppress(Exception):  # a peer's close is not what is measured
                cache.close()
        results[framework] = best
        for name, ops in best.items():
            progress(
                f"{framework} {name:16} get {ops['get'].median:8.2f} µs, "
                f"set {ops['set'].median:8.2f} µs"
            )
    return {"results": results, "unavailable": unavailable}
