"""shmfs.Cache on every backend: every method, TTL (fake and real time), LRU under pressure from
several processes, policy="error", memoize's stampede protection, exact counters and stats
across processes, and hash collisions forced through the test seam."""

from __future__ import annotations

import enum
import math
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import shmfs
from shmfs.cache import entry as cache_entry
from shmfs.cache import keys as cache_keys
from shmfs.cache import lru as cache_lru
from tests.cache_workers import count_and_incr, fill_cache, hold_lease, memo_square
from tests.workers import Children


@pytest.fixture
def ref(backend: str, where: str, key: int) -> dict[str, Any]:
    """What a child needs to open the test's cache."""
    return {"key": key, "size": 1 << 20, "backend": backend, "root": where}


@pytest.fixture
def opener(ref: dict[str, Any]) -> Iterator[Callable[..., shmfs.Cache]]:
    """Opens caches on the test's segment (``size=`` and other options may be given); closes
    them all and destroys the segment afterwards."""
    opened: list[shmfs.Cache] = []

    def open_cache(**kwargs: Any) -> shmfs.Cache:
        kwargs.setdefault("size", ref["size"])
        cache = shmfs.Cache(ref["key"], backend=ref["backend"], root=ref["root"], **kwargs)
        opened.append(cache)
        return cache

    yield open_cache
    for cache in opened:
        cache.close()
    shmfs.attach(ref["key"], backend=ref["backend"], root=ref["root"]).destroy()


@pytest.fixture
def cache(opener: Callable[..., shmfs.Cache]) -> shmfs.Cache:
    return opener()


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A fake clock for the cache: tests move ``now[0]`` instead of sleeping."""
    moment = [1_700_000_000.0]
    monkeypatch.setattr(cache_entry, "clock", lambda: moment[0])
    return moment


def test_every_method(cache: shmfs.Cache) -> None:
    assert cache.get("missing") is None and cache.get("missing", 5) == 5
    cache.set("a", {"value": 1})
    cache["b"] = [1, 2]
    cache[("t", 1, b"x", ("nested",))] = "tuple key"
    cache[7], cache[b"7"], cache["7"] = "int key", "bytes key", "str key"
    cache[-(2**80)] = "a big int"
    assert cache["a"] == {"value": 1} and cache.get("b") == [1, 2]
    assert (cache[7], cache[b"7"], cache["7"]) == ("int key", "bytes key", "str key")
    assert cache[("t", 1, b"x", ("nested",))] == "tuple key" and cache[-(2**80)] == "a big int"
    assert "a" in cache and "zz" not in cache and 7 in cache and "8" not in cache
    keys = ["a", "b", ("t", 1, b"x", ("nested",)), 7, b"7", "7", -(2**80)]
    assert sorted(map(repr, cache)) == sorted(map(repr, keys))
    assert len(cache) == 7
    assert not cache.add("a", "other") and cache["a"] == {"value": 1}
    assert cache.add("c", 3) and cache["c"] == 3
    assert cache.delete("c") and not cache.delete("c")
    assert cache.pop("b") == [1, 2] and cache.pop("b", "gone") == "gone"
    with pytest.raises(shmfs.VariableNotFound):
        cache.pop("b")
    with pytest.raises(KeyError):
        cache["b"]
    with pytest.raises(KeyError):
        del cache["b"]
    del cache["a"]
    assert "a" not in cache
    assert cache.incr("n") == 1 and cache.incr("n", 4) == 5 and cache.decr("n", 2) == 3
    assert cache.incr("f", 0.5, default=1.0) == 1.5
    with pytest.raises(shmfs.VariableNotFound):
        cache.incr("absent", default=None)
    assert cache.touch("n", ttl=100) and not cache.touch("absent")
    assert cache.expire() == 0
    cache.set("none", None)  # None is a value like any other
    assert "none" in cache and cache.get("none", "default") is None
    cache.clear()
    assert len(cache) == 0 and list(cache) == [] and cache.get(7) is None
    assert repr(cache).startswith("<shmfs.Cache policy=lru")


def test_values_and_handles_are_shared(opener: Callable[..., shmfs.Cache]) -> None:
    first, second = opener(), opener()
    first.set("k", "v")
    assert second.get("k") == "v"
    assert second.add("k2", 2) and not first.add("k2", 3) and first["k2"] == 2
    with opener() as third:
        assert third.pop("k") == "v"
    assert first.get("k") is None
    with pytest.raises(shmfs.SegmentDetached):
        third.get("k2")
    third.close()  # idempotent
    fourth = pickle.loads(pickle.dumps(first))  # a reference: it opens the same cache
    try:
        assert fourth["k2"] == 2 and fourth.policy == first.policy
    finally:
        fourth.close()


def test_bad_input_is_refused_and_changes_nothing(
    cache: shmfs.Cache, opener: Callable[..., shmfs.Cache]
) -> None:
    cache.set("kept", 1)
    for bad in (1.5, None, True, ["list"], ("ok", 2.5), {"a": 1}, frozenset()):
        with pytest.raises(shmfs.InvalidKeyType, match="cache keys are str, bytes, int"):
            cache.set(bad, 1)
        with pytest.raises(shmfs.InvalidKeyType):
            cache.get(bad)
    for ttl in (0, -1, "10", True, math.nan):
        with pytest.raises(shmfs.InvalidArgument, match="ttl"):
            cache.set("x", 1, ttl=ttl)  # type: ignore[arg-type]
    with pytest.raises(shmfs.InvalidArgument, match="policy"):
        opener(policy="fifo")
    with pytest.raises(shmfs.InvalidArgument, match="raw"):
        opener(codec="raw")
    with pytest.raises(shmfs.InvalidKeyType, match="cache name"):
        shmfs.Cache(1.5)  # type: ignore[arg-type]
    with pytest.raises(shmfs.InvalidKey):
        shmfs.Cache(0)
    cache.set("text", "abc")
    with pytest.raises(shmfs.InvalidArgument, match="cannot add 1 to the str"):
        cache.incr("text")
    with pytest.raises(shmfs.InvalidArgument, match="parentheses"):
        cache.memoize(lambda: 1)  # type: ignore[arg-type]
    with pytest.raises(shmfs.SerializationError):
        cache.set("kept", threading.Lock())
    assert cache["kept"] == 1 and cache["text"] == "abc"
    assert sorted(cache) == ["kept", "text"]


def test_names_hash_stably(opener: Callable[..., shmfs.Cache]) -> None:
    # Pinned: the mapping is part of the contract, the same in every process and version.
    assert cache_keys.name_key("sessions") == 642112156
    assert cache_keys.name_key("") == 767567858
    assert cache_keys.name_key("sessions") != cache_keys.name_key("session")
    assert cache_keys.name_key(1234) == 1234
    assert cache_keys.key_index(cache_keys.canonical("user:42")) == 1209749512779822422
    for text in ("a", "b" * 1000, "é"):
        assert 0 < cache_keys.name_key(text) < 2**31
    for key in ("s", b"s", 5, -5, ("a", (b"b", 3), ""), ()):
        assert cache_keys.decode_canonical(cache_keys.canonical(key)) == key
    assert len({cache_keys.canonical(key) for key in (1, "1", b"1", (1,), ("1",))}) == 5

    class Color(enum.StrEnum):
        RED = "red"

    class Size(enum.IntEnum):
        BIG = 3

    # Subclasses compare equal to their base type, so they are the same keys.
    assert cache_keys.canonical((Color.RED, Size.BIG)) == cache_keys.canonical(("red", 3))


def test_ttl_with_a_fake_clock(cache: shmfs.Cache, now: list[float]) -> None:
    cache.set("short", 1, ttl=10)
    cache.set("long", 2, ttl=100)
    cache.set("forever", 3)
    now[0] += 9.9
    assert cache.get("short") == 1
    now[0] += 0.1  # an entry is live while written <= now < expires
    assert cache.get("short") is None and "short" not in cache
    assert cache.get("long") == 2 and cache.touch("long", ttl=5)
    assert not cache.touch("short") and not cache.delete("short")
    assert cache.add("short", "again", ttl=10)  # an expired entry does not block add
    assert cache.incr("short-lived counter", 1) == 1 and cache.touch("short-lived counter", 1)
    now[0] += 6
    assert cache.get("long") is None and cache.get("forever") == 3
    assert cache.get("short") == "again"
    assert cache.pop("long", "expired") == "expired"
    now[0] += 1000
    assert sorted(cache) == ["forever"]
    assert cache.expire() == 2  # "short" and the counter; reading "long" removed it already
    assert list(cache) == ["forever"] and cache.expire() == 0


def test_default_ttl_and_its_override(opener: Callable[..., shmfs.Cache], now: list[float]) -> None:
    timed = opener(ttl=60)
    timed.set("default", 1)
    timed.set("longer", 2, ttl=600)
    timed.set("never", 3, ttl=math.inf)
    assert timed.incr("counter") == 1  # a new counter gets the default ttl too
    now[0] += 61
    assert [timed.get(key) for key in ("default", "longer", "never", "counter")] == [
        None,
        2,
        3,
        None,
    ]


def test_a_clock_stepped_back_hides_entries_from_the_future(
    cache: shmfs.Cache, now: list[float]
) -> None:
    cache.set("k", "v", ttl=100)
    now[0] -= 3600  # NTP stepped the clock back an hour: the entry's age is unknown
    assert cache.get("k") is None and "k" not in cache and len(cache) == 0
    now[0] += 3600 + 50  # and once the clock has caught up, it is live again until it expires
    assert cache.get("k") == "v"
    now[0] += 50
    assert cache.get("k") is None


def test_ttl_in_real_time(opener: Callable[..., shmfs.Cache]) -> None:
    # Half a second: a loaded machine's redis round trips once took the 0.1 s this used to be
    # between the set and the first get.
    timed = opener(ttl=0.5)
    timed.set("k", "v")
    timed.set("kept", "v", ttl=60)
    written = time.time()
    assert timed.get("k") == "v"
    time.sleep(0.7)  # lets wall-clock time pass beyond the ttl; it orders nothing
    assert time.time() - written > 0.5
    assert timed.get("k") is None and timed.get("kept") == "v"


def test_policy_error_raises_segment_full(opener: Callable[..., shmfs.Cache]) -> None:
    strict = opener(size=32 * 1024, policy="error")
    with pytest.raises(shmfs.SegmentFull):
        for number in range(100):
            strict.set(number, b"x" * 1024)
    assert strict.get(0) == b"x" * 1024 and strict.stats()["evictions"] == 0
    assert len(strict) == number  # every entry before the one that did not fit


def test_a_value_bigger_than_the_cache_evicts_nothing(opener: Callable[..., shmfs.Cache]) -> None:
    small = opener(size=32 * 1024)
    small.set("kept", "v")
    with pytest.raises(shmfs.SegmentFull):
        small.set("huge", b"x" * 64 * 1024)
    assert small["kept"] == "v" and small.stats()["evictions"] == 0


def test_lru_keeps_what_was_used(opener: Callable[..., shmfs.Cache]) -> None:
    small = opener(size=48 * 1024)
    for number in range(20):
        small.set(number, b"x" * 1024)
    for number in range(100, 150):
        small.set(number, b"y" * 1024)
        for used in range(10):  # the first half stays in use
            assert small.get(used) == b"x" * 1024
    # Approximately LRU: a cold entry whose stamp slot it shares with a hot one looks hot.
    assert sum(number in small for number in range(10, 20)) <= 3
    assert small.stats()["evictions"] >= 10


def test_a_big_value_makes_room_for_itself(opener: Callable[..., shmfs.Cache]) -> None:
    small = opener(size=64 * 1024)
    for number in range(50):
        small.set(number, b"x" * 1024)
    small.set("big", b"B" * 24 * 1024)
    assert small["big"] == b"B" * 24 * 1024
    stats = small.stats()
    assert stats["bytes"] <= 64 * 1024 and 15 <= stats["evictions"] < 50 and stats["entries"] > 5


def test_lru_keeps_the_recently_used_under_pressure_from_processes(
    ref: dict[str, Any], opener: Callable[..., shmfs.Cache], spawn_ctx: Any
) -> None:
    ref = {**ref, "size": 64 * 1024}
    cache = opener(size=ref["size"])
    hot = ["hot-1", "hot-2"]
    for key in hot:
        cache.set(key, b"h" * 512)
    start = spawn_ctx.Event()
    children = Children(spawn_ctx)
    try:
        for worker in range(3):
            children.start(fill_cache, ref, f"w{worker}", 100, hot, start)
        start.set()
        assert children.results(60) == [100] * 3
    finally:
        children.stop()
    assert all(cache.get(key) == b"h" * 512 for key in hot), "recently used entries evicted"
    stats = cache.stats()
    assert stats["bytes"] <= 64 * 1024 and stats["entries"] < 150 < stats["evictions"]


def test_hits_write_nothing_to_the_entry(cache: shmfs.Cache) -> None:
    cache.set("big", b"v" * 200_000)
    index = cache_keys.key_index(cache_keys.canonical("big"))
    with cache.segment.watch(index, timeout=0.1) as changes:
        for _ in range(200):
            assert cache.get("big") == b"v" * 200_000
        cache.stats()  # shares this handle's stamps: a write, but not of the entry
        with pytest.raises(shmfs.WaitTimeout):
            next(changes)


def test_memoize_in_process(cache: shmfs.Cache, now: list[float]) -> None:
    calls: list[Any] = []

    @cache.memoize(ttl=10)
    def double(x: Any, scale: int = 1) -> Any:
        calls.append(x)
        return None if x is None else x * 2 * scale

    assert double(2) == 4 and double(2) == 4 and double(2.0) == 4  # 2.0 == 2: one call
    assert double(1) == 2 and double(True) == 2
    assert double(x=3, scale=2) == 12 and double(scale=2, x=3) == 12
    assert double(None) is None and double(None) is None  # a None result is cached too
    assert calls == [2, 1, 3, None]

    @cache.memoize()
    def echo(x: Any) -> Any:
        calls.append(x)
        return x

    arguments = {"b": [1, {2.5, "s"}], "a": (2, b"x")}
    assert echo(arguments) == arguments and echo(dict(reversed(arguments.items()))) == arguments
    assert calls.count(arguments) == 1
    assert double.__name__ == "double"
    assert cache.delete(double.__cache_key__(2))
    assert double(2) == 4 and calls.count(2) == 2
    now[0] += 11
    assert double(2) == 4 and calls.count(2) == 3

    @cache.memoize(typed=True)
    def kind(x: Any) -> str:
        calls.append(x)
        return type(x).__name__

    assert (kind(1), kind(1.0), kind(True), kind(1)) == ("int", "float", "bool", "int")

    @cache.memoize()
    def fails(x: int) -> int:
        calls.append(x)
        raise ValueError(x)

    for _ in range(2):  # an exception is not cached, and the lease is given back
        with pytest.raises(ValueError):
            fails(7)
    assert calls.count(7) == 2


def test_memoize_runs_once_for_six_processes(
    ref: dict[str, Any], opener: Callable[..., shmfs.Cache], spawn_ctx: Any, tmp_path: Any
) -> None:
    cache = opener()
    calling, release = spawn_ctx.Queue(), spawn_ctx.Event()
    children = Children(spawn_ctx)
    try:
        for _ in range(6):
            children.start(memo_square, ref, str(tmp_path), 12, calling, release)
        for _ in range(6):
            calling.get(timeout=60)
        # Hold the computation until every caller has missed (a handle shares its first miss at
        # once, writing the shared counters), so five of them wait on the lease.
        with cache.segment.watch(cache_lru.STAMPS, timeout=60) as shared:
            while cache.stats()["misses"] < 6:
                next(shared)
        release.set()
        assert children.results(60) == [144] * 6
    finally:
        release.set()
        children.stop()
    assert len(os.listdir(tmp_path)) == 1, "the body ran more than once"
    assert cache.stats()["misses"] == 6


def test_memoize_takes_over_from_a_dead_computer(
    ref: dict[str, Any], opener: Callable[..., shmfs.Cache], spawn_ctx: Any
) -> None:
    cache = opener()
    computing = spawn_ctx.Event()
    child = spawn_ctx.Process(target=hold_lease, args=(ref, 5, computing))
    child.start()
    try:
        assert computing.wait(60)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.join(10)

    @cache.memoize(lease=60)
    def square(x: int) -> int:
        return x * x

    started = time.monotonic()
    assert square(5) == 25
    assert time.monotonic() - started < 10, "waited for the dead holder's lease to lapse"


def test_incr_and_stats_from_six_processes_are_exact(
    ref: dict[str, Any], opener: Callable[..., shmfs.Cache], spawn_ctx: Any
) -> None:
    cache = opener()
    cache.set("present", "here")
    start = spawn_ctx.Event()
    children = Children(spawn_ctx)
    try:
        for _ in range(6):
            children.start(count_and_incr, ref, 100, start)
        start.set()
        assert children.results(60) == [100] * 6
    finally:
        children.stop()
    assert cache.get("counter") == 600
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["evictions"]) == (601, 600, 0)
    assert stats["entries"] == 2 and 0 < stats["bytes"] < stats["size"] == 1 << 20


def test_stats_count_exactly(cache: shmfs.Cache, opener: Callable[..., shmfs.Cache]) -> None:
    cache.set("a", 1)
    cache.get("a")
    _ = cache["a"]
    cache.get("b")
    with pytest.raises(KeyError):
        cache["b"]
    assert "a" in cache and "b" not in cache  # `in` counts neither
    other = opener()
    other.get("a")
    other.close()  # shares its counts
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["evictions"], stats["entries"]) == (3, 2, 0, 1)
    assert set(stats) == {"hits", "misses", "evictions", "entries", "bytes", "size"}


def test_forced_hash_collisions_stay_correct(
    monkeypatch: pytest.MonkeyPatch, opener: Callable[..., shmfs.Cache], now: list[float]
) -> None:
    monkeypatch.setattr(cache_keys, "key_index", lambda text: 1234)
    cache = opener()
    for number in range(20):
        cache.set(f"key-{number}", number, ttl=100 if number % 2 else None)
    cache.set(("key-0",), "a tuple, not the str")
    cache.set(b"key-0", "bytes, not the str")
    assert [cache.get(f"key-{number}") for number in range(20)] == list(range(20))
    assert cache[("key-0",)] == "a tuple, not the str" and cache[b"key-0"] == "bytes, not the str"
    assert len(list(cache.segment)) == 2  # the stamps, and one bucket holding them all
    assert cache.pop("key-2") == 2 and cache.get("key-2") is None
    assert cache.incr("key-4") == 5 and cache.get("key-5") == 5
    assert not cache.add("key-6", 0) and cache.add("key-2", "back")
    assert cache.delete("key-8") and cache.touch("key-10", ttl=1000)
    assert len(cache) == 21
    now[0] += 101  # the odd ones expire
    assert cache.expire() == 10  # key-1, key-3, ... key-19
    assert cache.get("key-3") is None and cache.get("key-10") == 10 and cache.get("key-1") is None
    evens = [f"key-{number}" for number in range(0, 20, 2) if number != 8]
    assert sorted(map(repr, cache)) == sorted(map(repr, [*evens, ("key-0",), b"key-0"]))
    for number in (2, 4, 6, 10, 12, 14, 16, 18):
        cache.delete(f"key-{number}")
    cache.delete(("key-0",))
    cache.delete(b"key-0")
    assert cache["key-0"] == 0 and list(cache) == ["key-0"]


def test_collisions_and_eviction(
    monkeypatch: pytest.MonkeyPatch, opener: Callable[..., shmfs.Cache]
) -> None:
    monkeypatch.setattr(cache_keys, "key_index", lambda text: 100 + len(text) % 4)
    small = opener(size=32 * 1024)
    for number in range(200):
        small.set(f"k{number}", b"z" * 300)
        assert small.get(f"k{number}") == b"z" * 300
    assert 0 < len(small) < 200 and small.stats()["evictions"] > 0


@pytest.mark.parametrize("codec", ["json", "php", "pickle"])
def test_other_codecs(opener: Callable[..., shmfs.Cache], codec: str, now: list[float]) -> None:
    typed = opener(codec=codec)
    typed.set("k", {"a": [1, 2]}, ttl=10)
    typed.set(("t", b"\xff", 3), "v")
    assert typed.get("k") == {"a": [1, 2]} and typed[("t", b"\xff", 3)] == "v"
    assert typed.incr("n") == 1 and typed.add("x", 1) and not typed.add("x", 2)
    now[0] += 11
    assert typed.get("k") is None and sorted(map(repr, typed)) == sorted(
        map(repr, [("t", b"\xff", 3), "n", "x"])
    )
    assert typed.stats()["hits"] == 2


def test_errors_pickle() -> None:
    error = shmfs.VariableNotFound("'k' is not in the cache", key="'k'")
    assert pickle.loads(pickle.dumps(error)).key == "'k'"


def test_a_first_set_takes_the_fast_path_and_stays_exact(cache: Any) -> None:
    """``Cache.set`` of a key not stored yet goes into an empty variable in the one fast call
    (``put_if_head(..., or_absent=True)``); it must store exactly what the general path would."""
    for n in range(300):
        cache.set(f"first:{n}", {"n": n})
    assert all(cache.get(f"first:{n}") == {"n": n} for n in range(300))
    assert cache.stats()["entries"] >= 300
