"""redis: an ``incr`` of a plain integer is added on the server, in one script call.

The frame the server builds must be the very bytes Python writes, for every codec whose
integers it writes; everything it does not take (other types, huge integers, a damaged frame,
a signed segment, a pickle from an untrusted server) must behave exactly as the general path
did; and the guarantees of any write hold: the explicit lock's fencing, the quota, exactness
across processes.
"""

from __future__ import annotations

import multiprocessing
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

import shmfs
from bench.redis_server import RedisServer
from shmfs import codecs, frame
from tests.conftest import segment_ref
from tests.redis_workers import incr_many

redis = pytest.importorskip("redis")

# Across each boundary where Python's pickle changes form (K, M, J, LONG1 of 5-7 bytes) or
# json's digits grow, both ways, and to the edge of what the server adds.
_STEPS = [
    (0, 255),
    (255, 1),
    (65535, 1),
    (2**31 - 1, 1),
    (2**40 - 1, 1),
    (2**47 - 1, 1),
    (2**52 - 2, 1),
    (0, -1),
    (-128, -1),
    (-(2**31), -1),
    (-(2**39), -1),
    (-(2**47), -1),
    (-(2**52) + 2, -1),
    (99999, 1),
    (-1, 1),
]


@pytest.fixture(autouse=True)
def _no_leaked_keys(redis_leak_guard: None) -> None:
    """Every test here: ``redis_leak_guard`` (tests/conftest.py)."""


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A server of this test's own, whose command counts no other test moves."""
    directory = tempfile.mkdtemp(prefix="shmfs-redis-incr-")
    server = RedisServer.start(directory)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _stored(client: Any, key: int, index: int) -> bytes:
    data = client.hget(f"shmfs:{{{key}}}:vars", str(index))
    assert isinstance(data, bytes)
    return data


def _script_calls(client: Any) -> int:
    """Scripts run since the counts were reset (an EVALSHA refused as NOSCRIPT runs nothing)."""
    stats = client.info("commandstats")
    by_sha = stats.get("cmdstat_evalsha", {"calls": 0, "failed_calls": 0})
    return (
        int(by_sha["calls"])
        - int(by_sha["failed_calls"])
        + int(stats.get("cmdstat_eval", {}).get("calls", 0))
    )


@pytest.mark.parametrize("codec", ["cloudpickle", "pickle", "json"])
def test_the_server_writes_the_frame_python_writes(redis_url: str, key: int, codec: str) -> None:
    seg = shmfs.attach(key, 4096, backend="redis", root=redis_url, codec=codec)
    client = redis.Redis.from_url(redis_url)
    try:
        for start, delta in _STEPS:
            seg[1] = start
            assert seg.incr(1, delta) == start + delta
            assert _stored(client, key, 1) == frame.encode(codecs.get_codec(codec), start + delta)
            assert seg[1] == start + delta
        assert seg.incr(2, 5, 10) == 15  # empty: from the default
        assert seg.incr(3) == 1
        used = client.hget(f"shmfs:{{{key}}}:meta", "used")
        assert int(used) == sum(len(_stored(client, key, i)) for i in (1, 2, 3))
    finally:
        client.close()
        seg.destroy()


def test_an_incr_reads_nothing_first_and_makes_one_call(own_server: RedisServer, key: int) -> None:
    """Cold or warm, alone: one script call, no GET or peek before it."""
    seg = shmfs.attach(key, 4096, backend="redis", root=own_server.url)
    client = redis.Redis(unix_socket_path=own_server.socket)
    try:
        seg[1] = 41
        other = shmfs.attach(key, backend="redis", root=own_server.url)
        other[1] = 100  # seg's memory of index 1 is stale now
        other.detach()
        seg.incr(2)  # the server learns the script
        client.config_resetstat()
        assert seg.incr(1) == 101
        assert seg.incr(7) == 1
        stats = client.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] == 2
        assert {name for name in stats if not name.startswith("cmdstat_config")} <= {
            "cmdstat_evalsha",
            "cmdstat_info",
            # the scripts' own calls
            *(f"cmdstat_{c}" for c in ("get", "hmget", "exists", "hget", "hset", "hincrby")),
            "cmdstat_publish",
        }
    finally:
        client.close()
        seg.destroy()


def test_crowded_increments_are_exact_and_never_retried(own_server: RedisServer, key: int) -> None:
    seg = shmfs.attach(key, 4096, backend="redis", root=own_server.url)
    client = redis.Redis(unix_socket_path=own_server.socket)
    ctx = multiprocessing.get_context("spawn")
    try:
        seg[1] = 0
        seg.incr(2)  # the server learns the script
        client.config_resetstat()
        with ctx.Pool(4) as pool:
            results = pool.starmap(incr_many, [(segment_ref(seg), 1, 400)] * 4)
        assert results == [400] * 4
        assert seg[1] == 1600
        # Each incr is one call: only each worker's attach (one script) comes on top.
        assert _script_calls(client) <= 1600 + 4
    finally:
        client.close()
        seg.destroy()


@pytest.mark.parametrize("codec", ["cloudpickle", "json"])
def test_values_the_server_does_not_add_take_the_general_path(
    redis_url: str, key: int, codec: str
) -> None:
    seg = shmfs.attach(key, 4096, backend="redis", root=redis_url, codec=codec)
    try:
        seg[1] = "text"
        with pytest.raises(TypeError):
            seg.incr(1)
        assert seg[1] == "text"
        seg[2] = 1.5
        assert seg.incr(2) == 2.5
        seg[3] = True
        assert seg.incr(3) == 2
        seg[4] = 2**60
        assert seg.incr(4) == 2**60 + 1
        seg[5] = 2**52 - 1
        assert seg.incr(5) == 2**52  # past what the server adds: Python adds it
        assert seg.incr(5, -(2**53)) == -(2**52)
        assert seg.incr(6, 2**70) == 2**70  # a delta the server does not take
        assert seg.incr(7, 0.5) == 0.5
        seg[8] = None
        with pytest.raises(TypeError):
            seg.incr(8)
        with pytest.raises(TypeError):
            seg.incr(9, 1, None)
        assert 9 not in seg
        seg[10] = [1]
        with pytest.raises(TypeError):
            seg.incr(10)
        assert seg[10] == [1]
    finally:
        seg.destroy()


def test_an_integer_another_codec_wrote_is_added_and_stored_in_this_ones(
    redis_url: str, key: int
) -> None:
    pickled = shmfs.attach(key, 4096, backend="redis", root=redis_url)
    plain = shmfs.attach(key, backend="redis", root=redis_url, codec="json")
    client = redis.Redis.from_url(redis_url)
    try:
        pickled[1] = 5
        assert plain.incr(1) == 6
        assert _stored(client, key, 1) == frame.encode(codecs.get_codec("json"), 6)
        assert pickled.incr(1) == 7
        assert _stored(client, key, 1) == frame.encode(codecs.get_codec("cloudpickle"), 7)
    finally:
        client.close()
        plain.detach()
        pickled.destroy()


def test_a_damaged_counter_is_corrupt_and_left_alone(redis_url: str, key: int) -> None:
    seg = shmfs.attach(key, 4096, backend="redis", root=redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        seg[1] = 70000
        damaged = bytearray(_stored(client, key, 1))
        damaged[-3] ^= 1  # the integer's bytes, under an unchanged checksum
        client.hset(f"shmfs:{{{key}}}:vars", "1", bytes(damaged))
        with pytest.raises(shmfs.CorruptSegment):
            seg.incr(1)
        assert _stored(client, key, 1) == bytes(damaged)
    finally:
        client.close()
        seg.destroy()


def test_a_signed_segment_signs_its_counters(redis_url: str, key: int) -> None:
    """A signature needs the secret, which the server never has: the client signs."""
    seg = shmfs.attach(key, 4096, backend="redis", root=redis_url, secret="s3cret")
    plain = shmfs.attach(key, backend="redis", root=redis_url, codec="json")
    client = redis.Redis.from_url(redis_url)
    try:
        assert seg.incr(1) == 1
        assert seg.incr(1, 41) == 42
        assert _stored(client, key, 1)[6] & 1  # the signed flag
        assert seg[1] == 42
        with pytest.raises(shmfs.UnsafeSegment):
            plain.incr(1)  # a signed frame is not an integer anyone may add to
        plain[2] = 1  # an unsigned one planted in a signed segment is refused, not added to
        with pytest.raises(shmfs.UnsafeSegment):
            seg.incr(2)
    finally:
        client.close()
        plain.detach()
        seg.destroy()


def test_a_pickled_counter_on_a_server_others_reach_is_not_trusted(key: int) -> None:
    with_tcp = tempfile.mkdtemp(prefix="shmfs-redis-incr-tcp-")
    import socket  # noqa: PLC0415  # only this test needs a port

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = RedisServer.start(with_tcp, port=port)
    try:
        seg = shmfs.attach(key, 4096, backend="redis", root=server.url)
        plain = shmfs.attach(key, backend="redis", root=server.url, codec="json")
        seg[1] = 5  # a pickle anyone on the host could have planted
        with pytest.raises(shmfs.UnsafeSegment):
            seg.incr(1)
        with pytest.raises(shmfs.UnsafeSegment):
            plain.incr(1)
        assert shmfs.attach(key, backend="redis", root=server.url, trust_server=True).incr(1) == 6
        plain[2] = 5
        assert plain.incr(2) == 6  # json is safe from any server
        assert seg.incr(3) == 1  # nothing read: nothing to trust
        plain.detach()
        seg.destroy()
    finally:
        server.stop()
        shutil.rmtree(with_tcp, ignore_errors=True)


def test_incr_is_fenced_by_the_explicit_lock(redis_url: str, key: int) -> None:
    seg = shmfs.attach(key, 4096, backend="redis", root=redis_url)
    other = shmfs.attach(key, backend="redis", root=redis_url, lock_timeout=0.2)
    client = redis.Redis.from_url(redis_url)
    lock_key = f"shmfs:{{{key}}}:lock"
    try:
        seg[1] = 1
        with seg.lock():
            assert seg.incr(1) == 2  # through its own lock
            with pytest.raises(shmfs.LockTimeout):
                other.incr(1)
            token = client.get(lock_key)
            client.set(lock_key, b"another holder")  # the lease was lost and taken
            with pytest.raises(shmfs.LockTimeout, match="lost the segment lock"):
                seg.incr(1)
            client.set(lock_key, token)
        assert seg[1] == 2
        assert other.incr(1) == 3
    finally:
        client.close()
        other.detach()
        seg.destroy()


def test_a_counter_that_outgrows_the_segment_is_segment_full(redis_url: str, key: int) -> None:
    seg = shmfs.attach(key, 140, backend="redis", root=redis_url)
    try:
        seg[1] = b"f" * 40  # 79 bytes
        seg[2] = 255  # 29 bytes: 2 bytes of integer
        seg.put(3, 0)
        with pytest.raises(shmfs.SegmentFull) as info:
            seg.incr(2)  # 256 takes 39 bytes
        assert info.value.needed == 39
        assert seg[2] == 255
        assert seg.incr(3) == 1  # the same size: fits
    finally:
        seg.destroy()


@pytest.mark.parametrize("codec", ["cloudpickle", "pickle", "json"])
def test_the_servers_integer_frames_are_pythons_and_it_reads_no_other(
    redis_url: str, codec: str
) -> None:
    """The Lua that reads and writes integer frames, against Python's frames: every integer it
    writes byte for byte; of frames damaged at random, exactly those that are still the frame
    Python writes for an integer."""
    import random  # noqa: PLC0415  # only this test draws

    from shmfs.backends.redis import numbers  # noqa: PLC0415  # the module under test

    rng = random.Random(20)
    chosen = codecs.get_codec(codec)
    values = [0, 1, 255, 256, 65535, 65536, -1, -129, -32769]
    for bits in range(8, 53):
        values += [2**bits - 1, 2**bits, -(2**bits), -(2**bits) - 1]
    values += [rng.randrange(-(2**52) + 1, 2**52) for _ in range(200)]
    values = [v for v in values if -numbers.LIMIT < v < numbers.LIMIT]
    client = redis.Redis.from_url(redis_url)
    try:
        written = client.eval(
            numbers.library(chosen.id)
            + "local out = {} for i = 1, #ARGV do out[i] = encode(tonumber(ARGV[i])) end "
            "return out",
            0,
            *values,
        )
        assert written == [frame.encode(chosen, v) for v in values]
        frames = [frame.encode(chosen, v) for v in (5, 300, 70000, -5, 2**40, 2**55)]
        for other in ("text", 1.5, True, None, [1]):
            frames.append(frame.encode(chosen, other))
        damaged = list(frames)
        for _ in range(2000):
            data = bytearray(rng.choice(frames))
            place = rng.randrange(len(data))
            how = rng.randrange(3)
            if how == 0:
                data[place] = rng.randrange(256)
            elif how == 1:
                del data[place:]
            else:
                data.insert(place, rng.randrange(256))
            damaged.append(bytes(data))
        read = client.eval(
            numbers.library(chosen.id)
            + "local out = {} for i = 1, #ARGV do out[i] = decode(ARGV[i], true) or 'no' end "
            "return out",
            0,
            *damaged,
        )
        for data, got in zip(damaged, read, strict=True):
            try:
                found, payload = frame.decode(data)
                value = found.decode(payload)
            except Exception:
                value = None
            plain = (
                type(value) is int
                and -numbers.LIMIT < value < numbers.LIMIT
                and frame.encode(chosen, value) == data
            )
            assert got == (value if plain else b"no"), data
    finally:
        client.close()
