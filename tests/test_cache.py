"""shmfs.Cache on every backend: every method, TTL, LRU under pressure, memoize's stampede
protection and exact counters across processes, and forced hash collisions."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

import shmfs
from shmfs import cache as cache_module
from tests.cache_workers import fill_cache, incr_cache, slow_square
from tests.workers import Children


@pytest.fixture
def ref(backend: str, where: str, key: int) -> dict[str, Any]:
    return {"key": key, "size": 1 << 20, "backend": backend, "root": where}


@pytest.fixture
def cache(ref: dict[str, Any]) -> Iterator[shmfs.Cache]:
    opened = shmfs.Cache(ref["key"], ref["size"], backend=ref["backend"], root=ref["root"])
    yield opened
    opened.destroy()


def test_every_method(cache: shmfs.Cache) -> None:
    assert cache.get("missing") is None
    assert cache.get("missing", 5) == 5
    cache.set("a", {"value": 1})
    cache["b"] = [1, 2]
    cache[("t", 1, b"x")] = "tuple key"
    cache[7] = "int key"
    cache[b"7"] = "bytes key"
    cache["7"] = "str key"
    assert cache["a"] == {"value": 1} and cache.get("b") == [1, 2]
    assert (cache[7], cache[b"7"], cache["7"]) == ("int key", "bytes key", "str key")
    assert cache[("t", 1, b"x")] == "tuple key"
    assert "a" in cache and "zz" not in cache
    assert sorted(map(repr, cache)) == sorted(map(repr, ["a", "b", ("t", 1, b"x"), 7, b"7", "7"]))
    assert len(cache) == 6
    assert not cache.add("a", "other") and cache.add("c", 3)
    assert cache.delete("c") and not cache.delete("c")
    assert cache.pop("b") == [1, 2] and cache.pop("b", "gone") == "gone"
    with pytest.raises(KeyError):
        cache.pop("b")
    with pytest.raises(KeyError):
        cache["b"]
    with pytest.raises(KeyError):
        del cache["b"]
    del cache["a"]
    assert cache.incr("n") == 1 and cache.incr("n", 4) == 5 and cache.decr("n", 2) == 3
    cache.clear()
    assert len(cache) == 0 and list(cache) == []


def test_bad_keys_and_options(cache: shmfs.Cache, ref: dict[str, Any]) -> None:
    for bad in (1.5, None, True, ["list"], ("ok", 2.5)):
        with pytest.raises(shmfs.InvalidKeyType):
            cache.set(bad, 1)  # type: ignore[arg-type]
    with pytest.raises(shmfs.InvalidArgument):
        shmfs.Cache(ref["key"], policy="fifo", backend=ref["backend"], root=ref["root"])


def test_names_hash_stably() -> None:
    assert cache_module.name_key("sessions") == cache_module.name_key("sessions")
    assert cache_module.name_key("sessions") != cache_module.name_key("session")
    assert 0 < cache_module.name_key("sessions") < 2**31
    assert cache_module.name_key(1234) == 1234


def test_ttl(cache: shmfs.Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_000_000.0]
    monkeypatch.setattr(cache_module.time, "time", lambda: now[0])
    cache.set("short", 1, ttl=10)
    cache.set("long", 2, ttl=100)
    cache.set("forever", 3)
    now[0] += 10.5
    assert cache.get("short") is None and "short" not in cache
    assert cache.get("long") == 2 and cache.touch("long", ttl=5)
    assert not cache.touch("short")
    now[0] += 6
    assert cache.get("long") is None
    assert cache.get("forever") == 3
    assert cache.add("short", "again", ttl=10)  # an expired entry does not block add
    now[0] += 1000
    assert cache.expire() == 2  # "short" and "long": expired entries wait for expire()
    assert list(cache) == ["forever"]


def test_default_ttl_in_real_time(ref: dict[str, Any]) -> None:
    with shmfs.Cache(ref["key"], ttl=0.2, backend=ref["backend"], root=ref["root"]) as timed:
        timed.set("k", "v")
        assert timed.get("k") == "v"
        time.sleep(0.5)  # a generous margin over the ttl: this checks expiry, not ordering
        assert timed.get("k") is None
        timed.destroy()


def test_policy_error_raises_segment_full(ref: dict[str, Any]) -> None:
    strict = shmfs.Cache(
        ref["key"], 16 * 1024, policy="error", backend=ref["backend"], root=ref["root"]
    )
    try:
        with pytest.raises(shmfs.SegmentFull):
            for number in range(100):
                strict.set(number, b"x" * 1024)
        assert strict.get(0) == b"x" * 1024
    finally:
        strict.destroy()


def test_lru_keeps_recently_used_under_pressure(ref: dict[str, Any], spawn_ctx: Any) -> None:
    ref = {**ref, "size": 64 * 1024}
    cache = shmfs.Cache(ref["key"], ref["size"], backend=ref["backend"], root=ref["root"])
    hot = ["hot-1", "hot-2"]
    for key in hot:
        cache.set(key, b"h" * 512)
    start = spawn_ctx.Event()
    children = Children(spawn_ctx)
    try:
        for worker in range(3):
            children.start(fill_cache, ref, f"w{worker}", 150, hot, start)
        start.set()
        assert children.results(120) == [150] * 3
    finally:
        children.stop()
    assert all(cache.get(key) == b"h" * 512 for key in hot), "recently used entries evicted"
    assert cache.segment.stats()["used"] <= 64 * 1024
    assert len(cache) < 450  # most of the 450 cold entries had to go
    cache.destroy()


def test_memoize_runs_once_for_six_processes(
    ref: dict[str, Any], spawn_ctx: Any, tmp_path: Any
) -> None:
    start = spawn_ctx.Event()
    children = Children(spawn_ctx)
    try:
        for _ in range(6):
            children.start(slow_square, ref, str(tmp_path), 12, start)
        start.set()
        assert children.results(120) == [144] * 6
    finally:
        children.stop()
    assert len(os.listdir(tmp_path)) == 1, "the body ran more than once"
    shmfs.Cache(ref["key"], backend=ref["backend"], root=ref["root"]).destroy()


def test_memoize_in_process(cache: shmfs.Cache) -> None:
    calls = []

    @cache.memoize(typed=True)
    def double(x: Any) -> Any:
        calls.append(x)
        return x * 2

    assert double(2) == 4 and double(2) == 4 and double(2.0) == 4.0
    assert calls == [2, 2.0]  # typed: 2 and 2.0 are different calls
    assert double.__name__ == "double"


def test_incr_from_six_processes_is_exact(ref: dict[str, Any], spawn_ctx: Any) -> None:
    start = spawn_ctx.Event()
    children = Children(spawn_ctx)
    try:
        for _ in range(6):
            children.start(incr_cache, ref, 200, start)
        start.set()
        assert children.results(120) == [200] * 6
    finally:
        children.stop()
    with shmfs.Cache(ref["key"], backend=ref["backend"], root=ref["root"]) as cache:
        assert cache.get("counter") == 1200
        cache.destroy()


def test_stats_are_exact(cache: shmfs.Cache) -> None:
    cache.set("a", 1)
    cache.get("a")
    cache.get("a")
    cache.get("b")
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["evictions"], stats["entries"]) == (2, 1, 0, 1)
    assert stats["bytes"] > 0


def test_forced_hash_collisions_stay_correct(
    cache: shmfs.Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_module, "key_index", lambda canonical: 1234)
    cache._slots.clear()
    for number in range(20):
        cache.set(f"key-{number}", number)
    assert [cache.get(f"key-{number}") for number in range(20)] == list(range(20))
    assert cache.pop("key-3") == 3 and cache.get("key-3") is None
    assert cache.incr("key-4") == 5 and cache.get("key-5") == 5
    assert len(list(cache.segment)) == 1  # one bucket holds them all
    assert len(cache) == 19
