"""``get_many`` and ``put_many`` on every backend: results, validation, all or nothing, readers
in other processes, SIGKILLed writers, and redis's one round trip."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import shmfs
from shmfs.cache import entry as cache_entry
from shmfs.cache import keys as cache_keys
from tests.batch_workers import put_batches, put_batches_forever, read_batches
from tests.conftest import client_commands, segment_ref
from tests.test_contract import BAD_INDICES
from tests.workers import Children, is_intact

WAIT = 60


def snapshot(seg: shmfs.Segment) -> dict[int, Any]:
    return {index: seg[index] for index in seg}


# ------------------------------------------------------------------------- results


def test_get_many_returns_those_present_in_the_order_asked(seg: shmfs.Segment) -> None:
    seg.put_many({3: "three", -1: [1, 2], 7: b"x" * 20_000, 2**63 - 1: None})
    found = seg.get_many([7, 5, -1, 3, 7, 2**63 - 1])
    assert list(found) == [7, -1, 3, 2**63 - 1]  # asked order, repeats once, absent left out
    assert found == {7: b"x" * 20_000, -1: [1, 2], 3: "three", 2**63 - 1: None}
    assert seg.get_many([]) == {}
    assert seg.get_many(iter([3])) == {3: "three"}
    assert seg.get_many(range(100, 105)) == {}


def test_put_many_replaces_adds_and_counts(seg: shmfs.Segment) -> None:
    seg.put_many({1: "a", 2: "b"})
    seg.put_many([(2, "B"), (3, "c" * 9000), (2, "BB")])  # pairs; a later pair wins
    assert snapshot(seg) == {1: "a", 2: "BB", 3: "c" * 9000}
    assert seg.stats()["variables"] == 3
    seg.put_many({})
    seg.put_many({3: "small now", 4: "d" * 9000})
    assert snapshot(seg) == {1: "a", 2: "BB", 3: "small now", 4: "d" * 9000}
    used = seg.stats()["used"]
    seg.put_many({index: seg[index] for index in seg})  # the same values again: same room
    assert seg.stats()["used"] == used


def test_put_many_of_many_values_grows_the_segment_index(seg: shmfs.Segment) -> None:
    seg.put_many({index: index * 3 for index in range(2000)})
    assert len(seg) == 2000
    assert seg.get_many(range(0, 2000, 7)) == {i: i * 3 for i in range(0, 2000, 7)}
    seg.put_many({index: -index for index in range(1000, 3000)})
    assert len(seg) == 3000
    assert seg[999] == 2997 and seg[1000] == -1000 and seg[2999] == -2999


def test_batches_inside_the_lock_and_on_other_handles(attach: Any, key: int) -> None:
    seg = attach(key, 1 << 20)
    other = attach(key)
    with seg.lock():  # re-entrant for this thread; redis writes fenced by this lock
        seg.put_many({1: "one", 2: "two"})
        assert seg.get_many([1, 2]) == {1: "one", 2: "two"}
    assert other.get_many([2, 1]) == {2: "two", 1: "one"}


def test_signed_batches_bind_each_value_to_its_index(attach: Any, key: int) -> None:
    with attach(key, secret=b"s3cret") as seg:
        seg.put_many({1: {"user": "alice"}, 2: {"user": "bob", "admin": True}})
        assert seg.get_many([1, 2]) == {1: {"user": "alice"}, 2: {"user": "bob", "admin": True}}
        seg.put(3, "single")  # a single put's signature and a batch's read agree
        assert seg.get_many([3]) == {3: "single"}
        with attach(key) as unsigned, pytest.raises(shmfs.UnsafeSegment):
            unsigned.put_many({4: "unsigned"})
            seg.get(4)


def test_a_detached_handle_says_so(attach: Any, key: int) -> None:
    seg = attach(key, 4096)
    seg.detach()
    with pytest.raises(shmfs.SegmentDetached):
        seg.get_many([1])
    with pytest.raises(shmfs.SegmentDetached):
        seg.put_many({1: 1})


# ------------------------------------------------------------ bad input changes nothing


@pytest.mark.parametrize(("index", "error"), BAD_INDICES)
def test_a_bad_index_raises_its_error_and_stores_nothing(
    seg: shmfs.Segment, index: Any, error: type[Exception]
) -> None:
    seg.put_many({1: "old"})
    with pytest.raises(error):
        seg.get_many([1, index])
    with pytest.raises(error):
        seg.put_many({2: "new", index: "new", 3: "new"})  # (True == 1: no 1 here)
    with pytest.raises(error):
        seg.put_many([(1, "new"), (index, "new")])
    assert snapshot(seg) == {1: "old"}


@pytest.mark.parametrize("bad", ["12", b"12", 5, None, {1: 2}])
def test_get_many_refuses_what_is_not_a_list_of_indices(seg: shmfs.Segment, bad: Any) -> None:
    with pytest.raises(shmfs.InvalidArgument):
        seg.get_many(bad)


@pytest.mark.parametrize("bad", ["12", 5, None, [(1, 2, 3)], [1, 2]])
def test_put_many_refuses_what_is_not_a_mapping(seg: shmfs.Segment, bad: Any) -> None:
    with pytest.raises(shmfs.InvalidArgument):
        seg.put_many(bad)
    assert len(seg) == 0


def test_one_value_that_does_not_encode_stores_nothing(attach: Any, key: int) -> None:
    seg = attach(key, 1 << 20, codec="json")
    seg.put_many({1: "old", 2: [1]})
    with pytest.raises(shmfs.SerializationError):
        seg.put_many({1: "new", 3: "new", 2: {1, 2}, 4: "new"})
    assert snapshot(seg) == {1: "old", 2: [1]}
    pickled = attach(key)
    with pytest.raises(shmfs.SerializationError):
        pickled.put_many({1: "new", 5: threading.Lock()})
    assert snapshot(seg) == {1: "old", 2: [1]}


@pytest.mark.parametrize("large", [False, True])
def test_a_batch_that_does_not_fit_stores_nothing(attach: Any, key: int, large: bool) -> None:
    """Each value fits alone, the batch does not: one SegmentFull for the whole batch, every
    old value kept (on sysv, values the batch wrote before the one that failed are put back)."""
    size = 64 * 1024 if large else 4096
    part = 20_000 if large else 1000
    seg = attach(key, size)
    seg.put_many({1: b"1" * part, 2: b"2" * part})
    before = (snapshot(seg), seg.stats()["used"])
    batch = {2: b"b" * part, 3: b"c" * part, 1: b"a" * part, 4: b"d" * part, 5: b"e" * part}
    with pytest.raises(shmfs.SegmentFull) as info:
        seg.put_many(batch)
    assert isinstance(info.value.needed, int)
    assert info.value.needed > 5 * part  # the whole batch's bytes
    assert (snapshot(seg), seg.stats()["used"]) == before
    seg.put_many({3: b"c" * part})  # the segment still works, and has the room it had
    assert seg[3] == b"c" * part


# ------------------------------------------------------------------ other processes


def test_readers_in_other_processes_never_see_half_a_batch(
    seg: shmfs.Segment, spawn_ctx: Any
) -> None:
    indexes = [5, 6, 7, 8]
    ref = segment_ref(seg)
    # A barrier, not an event: a reader still starting up when the writer is done would read
    # nothing, and "some whole batch was seen" would fail for a slow start, not a torn read.
    start, stop = spawn_ctx.Barrier(3), spawn_ctx.Event()
    readers, writers = Children(spawn_ctx), Children(spawn_ctx)
    try:
        for _ in range(2):
            readers.start(read_batches, ref, indexes, start, stop)
        writers.start(put_batches, ref, indexes, 300, start)
        assert writers.results(WAIT) == [300]
        stop.set()
        counts = readers.results(WAIT)
    finally:
        stop.set()
        writers.stop()
        readers.stop()
    for count in counts:
        assert count["mixed"] == count["torn"] == count["partial"] == 0, counts
    assert sum(count["whole"] for count in counts) > 0, counts
    assert {value["seq"] for value in seg.get_many(indexes).values()} == {300}


@pytest.fixture(scope="module")
def forkserver() -> Any:
    import multiprocessing  # noqa: PLC0415  # only the kill test needs a forkserver

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["shmfs", "tests.workers", "tests.batch_workers"])
    return ctx


def _kill_batch_writers(seg: shmfs.Segment, ctx: Any, rounds: int, large: bool) -> set[str]:
    """Kill a ``put_many`` loop at a random instant, ``rounds`` times; after each, every
    variable is whole and of this writer or the last, and no temporary file is left. Returns
    what was seen: "whole" (one seq) and "mixed" (a batch part written) rounds."""
    indexes = [11, 12, 13, 14, 15, 16]
    ref = segment_ref(seg)
    location = seg.stats()["location"]
    seen: set[str] = set()
    last: dict[int, int] = {}
    for round_no in range(rounds):
        started = ctx.Event()
        first = (round_no + 1) * 1_000_000
        writer = ctx.Process(target=put_batches_forever, args=(ref, indexes, first, large, started))
        writer.start()
        try:
            assert started.wait(WAIT), "writer never started"
            time.sleep(random.uniform(0, 0.004))  # a random instant in the write loop
        finally:
            os.kill(writer.pid, signal.SIGKILL)
            writer.join(WAIT)
        assert writer.exitcode == -signal.SIGKILL
        with seg.lock(timeout=5):  # free at once; taking it repairs what the writer left
            found = seg.get_many(indexes)
            litter = (
                [n for n in os.listdir(location) if n.startswith(".tmp-")]
                if seg.backend == "tmpfs"
                else []
            )
        assert sorted(found) == indexes, f"round {round_no}: lost {set(indexes) - set(found)}"
        assert all(is_intact(value) for value in found.values()), f"round {round_no}: torn"
        for index, value in found.items():
            assert value["seq"] >= first or value["seq"] == last.get(index), f"round {round_no}"
        last = {index: value["seq"] for index, value in found.items()}
        seen.add("whole" if len(set(last.values())) == 1 else "mixed")
        assert litter == [], f"round {round_no}: dead writer's files left: {litter}"
        assert seg.stats()["variables"] == len(indexes)
    return seen


@pytest.mark.parametrize("large", [False, True])
def test_sigkilled_batch_writers_leave_all_old_or_all_new_on_tmpfs(
    tmpfs_backend: str, root: str, key: int, forkserver: Any, large: bool
) -> None:
    seg = shmfs.attach(key, 8 << 20, backend=tmpfs_backend, root=root)
    try:
        assert _kill_batch_writers(seg, forkserver, 40, large) == {"whole"}
    finally:
        seg.destroy()


def test_sigkilled_batch_writers_leave_each_variable_old_or_new_on_sysv(
    sysv_paths: str, key: int, forkserver: Any
) -> None:
    """System V keeps each variable's old or new value, but a batch may be part written (the
    README says so): checked here, not that it is all or nothing."""
    seg = shmfs.attach(key, 1 << 20, backend="sysv")
    try:
        assert _kill_batch_writers(seg, forkserver, 40, True) <= {"whole", "mixed"}
    finally:
        seg.destroy()


# ------------------------------------------------------------------------ redis


def test_redis_batches_are_one_round_trip_each(redis_url: str, key: int) -> None:
    redis = pytest.importorskip("redis")
    seg = shmfs.attach(key, 1 << 20, backend="redis", root=redis_url)
    client = redis.Redis.from_url(redis_url)
    monitor = client.monitor()
    try:
        batch = {index: f"value {index}" * 10 for index in range(100)}
        seg.put_many(batch)  # loads the script: the counted calls below use EVALSHA
        assert seg.get_many(range(100)) == batch  # trust checked once, not per round trip
        client.ping()  # its connection is made before the monitor starts
        with monitor as m:
            seg.put_many(batch)
            seg.get_many(range(100))
            commands = client_commands(client, m)
        # WRITE_MANY; the read, the READ_MANY script without the C module (test_redis_batch.py)
        assert commands == ["EVALSHA", "HMGET" if shmfs.hotpath.available() else "EVALSHA"]
    finally:
        client.close()
        seg.destroy()


@pytest.mark.parametrize("secret", [None, "s3cret"])  # the reply read in C; in Python
def test_a_redis_batch_read_larger_than_one_server_step(
    redis_url: str, key: int, secret: str | None
) -> None:
    """The server reads 4000 indexes at a time: a batch spanning three such steps, with absent
    and negative indexes in each, comes back whole and in order."""
    seg = shmfs.attach(key, 1 << 22, backend="redis", root=redis_url, secret=secret)
    try:
        stored = {index: f"v{index}" for index in range(-5000, 5000) if index % 3}
        seg.put_many(stored)
        asked = [*range(-5000, 5000), 2**63 - 1, -(2**63)]
        assert list(seg.get_many(asked).items()) == list(stored.items())
    finally:
        seg.destroy()


def test_redis_batches_are_fenced_by_another_holders_lock(redis_url: str, key: int) -> None:
    seg = shmfs.attach(key, 1 << 20, backend="redis", root=redis_url)
    other = shmfs.attach(key, backend="redis", root=redis_url, lock_timeout=0.2)
    try:
        with seg.lock():
            with pytest.raises(shmfs.LockTimeout):
                other.put_many({1: "x", 2: "y"})
            seg.put_many({1: "mine", 2: "mine"})
        assert snapshot(other) == {1: "mine", 2: "mine"}
        other.put_many({1: "free again"})
        assert seg[1] == "free again"
    finally:
        other.detach()
        seg.destroy()


# ------------------------------------------------------------------------ Cache


@pytest.fixture
def cache(backend: str, where: str, key: int) -> Iterator[shmfs.Cache]:
    opened = shmfs.Cache(key, 1 << 20, backend=backend, root=where)
    try:
        yield opened
    finally:
        opened.close()
        shmfs.attach(key, backend=backend, root=where).destroy()


def test_cache_get_many_and_set_many(cache: shmfs.Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    moment = [1_700_000_000.0]
    monkeypatch.setattr(cache_entry, "clock", lambda: moment[0])
    cache.set_many({"a": 1, ("t", 2): [2], b"c": None}, ttl=10)
    cache.set_many({"d": "forever"})
    cache.set_many({})
    assert cache.get_many(["a", "x", ("t", 2), b"c", "d"]) == {
        "a": 1,
        ("t", 2): [2],
        b"c": None,
        "d": "forever",
    }
    stats = cache.stats()
    assert (stats["hits"], stats["misses"]) == (4, 1)
    moment[0] += 11  # the ttl=10 entries expire
    assert cache.get_many(["a", ("t", 2), b"c", "d"]) == {"d": "forever"}
    assert cache.get("a") is None and len(cache) == 1


def test_cache_batches_keep_colliding_keys_apart(
    cache: shmfs.Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache.set("old", "kept")
    monkeypatch.setattr(cache_keys, "key_index", lambda text: 4321)
    cache.set("same-slot", 0)  # now "old" shares a variable only if it hashed there: not
    cache.set_many({f"k{n}": n for n in range(10)})
    assert cache.get_many([f"k{n}" for n in range(10)]) == {f"k{n}": n for n in range(10)}
    assert cache.get("same-slot") == 0
    monkeypatch.undo()
    assert cache.get("old") == "kept"


def test_cache_set_many_stores_nothing_when_a_value_does_not_encode(cache: shmfs.Cache) -> None:
    cache.set("a", "old")
    with pytest.raises(shmfs.SerializationError):
        cache.set_many({"a": "new", "b": "new", "c": threading.Lock()})
    assert cache.get_many(["a", "b", "c"]) == {"a": "old"}


def test_cache_set_many_evicts_for_the_batch_or_raises_with_policy_error(
    backend: str, where: str, key: int
) -> None:
    for policy in ("lru", "error"):
        cache = shmfs.Cache(key, 64 * 1024, backend=backend, root=where, policy=policy)
        try:
            cache.set_many({f"old-{n}": "x" * 1000 for n in range(40)})
            batch = {f"new-{n}": "y" * 1000 for n in range(30)}
            if policy == "error":
                before = {f"old-{n}" for n in range(40)} & set(cache.get_many(list(cache)))
                with pytest.raises(shmfs.SegmentFull):
                    cache.set_many(batch)
                assert cache.get_many(list(batch)) == {}
                assert set(cache.get_many([f"old-{n}" for n in range(40)])) == before
            else:
                cache.set_many(batch)
                assert cache.get_many(list(batch)) == batch
                assert cache.stats()["evictions"] > 0
        finally:
            cache.close()
            shmfs.attach(key, backend=backend, root=where).destroy()


def test_cache_batches_take_one_lock(cache: shmfs.Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    """get_many and set_many go through the segment's batch calls: one each (the cache's own
    bookkeeping, the LRU stamps below FIRST_ENTRY, aside)."""
    calls: list[Any] = []
    segment = cache.segment
    for name in ("get_many", "put_many", "get", "put"):
        real = getattr(segment, name)

        def counted(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            if _name.endswith("_many") or args[0] >= cache_keys.FIRST_ENTRY:
                calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(segment, name, counted)
    cache.set_many({f"k{n}": n for n in range(50)})
    assert cache.get_many([f"k{n}" for n in range(50)]) == {f"k{n}": n for n in range(50)}
    assert calls == ["get_many", "put_many", "get_many"]
