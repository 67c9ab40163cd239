"""Redis batch reads: one ``HMGET`` whose reply the C module reads off the socket
(``shmfs/backends/redis/reply.py``, ``shmfs/_hot_c/resp.c``), against the ways it falls back to
(the same ``HMGET`` read by redis-py's parser; the ``READ_MANY`` script without the C module).

Redis-only: the reply's wire format and the connection's handling are the redis backend's own.
Every case runs on each of the three paths (``path``), and compares with the script's answer.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

import shmfs
from shmfs import hotpath
from shmfs.backends.redis import reply
from tests.redis_proxy import Proxy

redis = pytest.importorskip("redis")

PATHS = ["raw", "parsed", "script"]


class Path:
    """Which way a test's batch reads go, and how many replies each reader read."""

    def __init__(self, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
        if name != "script" and hotpath.resp_many() is None:
            pytest.skip("the HMGET is sent only with the C module in use")
        self.name, self._monkeypatch = name, monkeypatch
        self.reads = {"_raw": 0, "_parsed": 0}
        for reader in self.reads:
            real = getattr(reply, reader)

            def counted(*args: Any, _real: Any = real, _reader: str = reader) -> Any:
                self.reads[_reader] += 1
                return _real(*args)

            monkeypatch.setattr(reply, reader, counted)
        if name == "parsed":
            monkeypatch.setattr(reply, "RAW", False)
        elif name == "script":
            monkeypatch.setattr(hotpath, "resp_many", lambda: None)

    def check(self) -> None:
        """The reads went the way named, and no other way."""
        expected = {"_raw": self.name == "raw", "_parsed": self.name == "parsed"}
        assert {reader: count > 0 for reader, count in self.reads.items()} == expected, (
            self.name,
            self.reads,
        )

    def by_script(self, call: Any) -> Any:
        """``call()``'s outcome on the script path: its result, or its error's type and text."""
        with self._monkeypatch.context() as patched:
            patched.setattr(hotpath, "resp_many", lambda: None)
            return outcome(call)


def outcome(call: Any) -> Any:
    try:
        return call()
    except shmfs.ShmfsError as exc:
        return type(exc), getattr(exc, "index", None), str(exc)


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Path:
    return Path(str(request.param), monkeypatch)


def _same_on_every_path(path: Path, call: Any) -> Any:
    expected = path.by_script(call)
    found = outcome(call)
    assert found == expected
    path.check()
    return found


def test_bytes_left_in_redis_pys_reader_send_the_reply_its_way(redis_url: str, key: int) -> None:
    """A reply redis-py's reader already holds (part of) is read by it, not off the socket:
    here a ``PING`` and the ``HMGET`` sent together, and both replies arrived before the
    ``PING``'s was read."""
    seg = shmfs.attach(key, 1 << 20, backend="redis", root=redis_url)
    client = _server(seg)
    conn = client.connection_pool.get_connection()
    try:
        seg.put_many({index: f"value {index}" for index in range(20)})
        name = f"shmfs:{{{key}}}:vars"
        asked = list(range(25))
        request = reply.hmget(name, asked)
        conn.send_packed_command([request])
        expected = reply.read_many(conn, len(asked))
        values = client.hmget(name, asked)
        null = b"_\r\n" if str(conn.protocol) == "3" else b"$-1\r\n"
        answer = b"*%d\r\n" % len(values) + b"".join(
            null if value is None else b"$%d\r\n%b\r\n" % (len(value), value) for value in values
        )
        conn.send_packed_command([b"*1\r\n$4\r\nPING\r\n" + request])
        deadline = time.monotonic() + 10
        while len(conn._sock.recv(1 << 20, socket.MSG_PEEK)) < len(b"+PONG\r\n" + answer):
            assert time.monotonic() < deadline, "the replies did not arrive"
        assert conn.read_response() in (b"PONG", "PONG")
        assert conn._parser._buffer.unread_bytes() > 0
        assert reply.read_many(conn, len(asked)) == expected
    finally:
        client.connection_pool.release(conn)
        client.close()
        seg.destroy()


def _server(seg: shmfs.Segment) -> Any:
    return redis.Redis.from_url(str(seg._spec["root"]))


# redis-py's default (RESP3 from redis-py 8: its null is ``_``), and RESP2 (``$-1``).
@pytest.mark.parametrize("protocol", ["", "?protocol=2"])
def test_present_absent_and_odd_values_read_alike(
    path: Path, redis_url: str, key: int, protocol: str
) -> None:
    seg = shmfs.attach(key, 1 << 22, backend="redis", root=redis_url + protocol)
    try:
        stored: dict[int, Any] = {i: f"value {i}" * (i % 7) for i in range(0, 300, 2)}
        stored |= {301: b"", 303: 0, 305: [1, "two", None], 307: "x" * 70_000, -9: 2**70}
        seg.put_many(stored)
        asked = [*range(-10, 320), 2**63 - 1, -(2**63), 307, 4]  # repeats, a long value
        found = _same_on_every_path(path, lambda: seg.get_many(asked))
        assert found == {index: stored[index] for index in asked if index in stored}
        assert _same_on_every_path(path, lambda: seg.get_many([1, 3, 5])) == {}
    finally:
        seg.destroy()


def test_ten_thousand_indexes_in_a_reply_many_socket_reads_long(
    path: Path, redis_url: str, key: int
) -> None:
    seg = shmfs.attach(key, 1 << 24, backend="redis", root=redis_url)
    try:
        stored = {index: f"{index:>6}" * 40 for index in range(10_000) if index % 5}
        seg.put_many(stored)
        found = _same_on_every_path(path, lambda: seg.get_many(list(range(10_000))))
        assert found == stored  # about 2.6 MB of reply
    finally:
        seg.destroy()


def test_a_damaged_value_is_reported_alike(path: Path, redis_url: str, key: int) -> None:
    seg = shmfs.attach(key, 1 << 20, backend="redis", root=redis_url)
    client = _server(seg)
    try:
        seg.put_many({index: f"value {index}" for index in range(10)})
        name = f"shmfs:{{{key}}}:vars"
        stored = bytearray(client.hget(name, "5"))
        stored[24] ^= 0x01
        client.hset(name, "5", bytes(stored))
        client.hset(name, "7", b"short")
        found = _same_on_every_path(path, lambda: seg.get_many(list(range(10))))
        assert found[0] is shmfs.CorruptSegment and found[1] == 5, found
    finally:
        client.close()
        seg.destroy()


def test_a_destroyed_segment_is_reported_alike(path: Path, redis_url: str, key: int) -> None:
    seg = shmfs.attach(key, 1 << 20, backend="redis", root=redis_url)
    other = shmfs.attach(key, backend="redis", root=redis_url)
    try:
        seg.put_many({1: "one", 2: "two"})
        other.destroy()
        found = _same_on_every_path(path, lambda: seg.get_many([1, 2]))
        assert found[0] is shmfs.SegmentNotFound, found
    finally:
        seg.detach()


def test_an_error_reply_is_raised_as_the_server_said_it(
    path: Path, redis_url: str, key: int
) -> None:
    """The values' key holding a string: the server answers WRONGTYPE, raised as any error
    reply is (the script says it in its own words, so the paths' texts are not compared)."""
    seg = shmfs.attach(key, 1 << 20, backend="redis", root=redis_url)
    client = _server(seg)
    name = f"shmfs:{{{key}}}:vars"
    try:
        seg.put_many({1: "one"})
        values = client.hgetall(name)
        client.delete(name)
        client.set(name, "not a hash")
        with pytest.raises(shmfs.ShmfsError, match="WRONGTYPE"):
            seg.get_many([1, 2])
        path.check()
        client.delete(name)
        client.hset(name, mapping=values)
        assert seg.get_many([1, 2]) == {1: "one"}  # the connection still serves
    finally:
        client.delete(name)
        client.close()
        seg.destroy()


def test_a_reply_cut_mid_way_is_read_again_once(
    path: Path, proxy: Proxy, redis_url: str, key: int
) -> None:
    seg = shmfs.attach(key, 1 << 22, backend="redis", root=proxy.url)
    try:
        stored = {index: f"value {index}" * 50 for index in range(200)}
        seg.put_many(stored)
        marker = f"shmfs:{{{key}}}:vars".encode()
        proxy.cut_reply(marker, keep=5000)
        assert seg.get_many(list(range(200))) == stored
        assert proxy.cuts_left == 0
        proxy.cut_reply(marker, keep=5000, times=2)
        with pytest.raises(shmfs.BackendUnavailable) as raised:
            seg.get_many(list(range(200)))
        assert raised.value.committed is False and proxy.cuts_left == 0
        assert seg.get_many([0, 199]) == {0: stored[0], 199: stored[199]}
        path.check()
    finally:
        seg.destroy()


def test_a_stalled_reply_times_out_and_is_read_again_once(
    path: Path, proxy: Proxy, redis_url: str, key: int
) -> None:
    seg = shmfs.attach(key, 1 << 20, backend="redis", root=proxy.url + "?socket_timeout=0.3")
    try:
        stored = {index: f"value {index}" for index in range(100)}
        seg.put_many(stored)
        marker = f"shmfs:{{{key}}}:vars".encode()
        proxy.cut_reply(marker, keep=20, stall=True)
        began = time.monotonic()
        assert seg.get_many(list(range(100))) == stored
        assert time.monotonic() - began >= 0.3 and proxy.cuts_left == 0
        proxy.cut_reply(marker, keep=20, times=2, stall=True)
        with pytest.raises(shmfs.BackendUnavailable) as raised:
            seg.get_many(list(range(100)))
        assert isinstance(raised.value.__cause__, redis.TimeoutError), raised.value.__cause__
        assert seg.get_many([7]) == {7: "value 7"}
        path.check()
    finally:
        seg.destroy()


# ------------------------------------------------------------------ the scanner, in C

scan = hotpath.resp_many()
needs_c = pytest.mark.skipif(scan is None, reason="the C module is not in use")


def _scanned(reply_bytes: bytes, count: int, step: int) -> Any:
    """``reply_bytes`` scanned as if it arrived ``step`` bytes at a time."""
    assert scan is not None
    state: Any = (0, -1)
    for used in [*range(step, len(reply_bytes), step), len(reply_bytes)]:
        state = scan(reply_bytes, used, count, state)
        if not (type(state) is tuple and type(state[0]) is int):
            assert used == len(reply_bytes), "whole before its last byte"
            return state
    return state


@needs_c
@pytest.mark.parametrize("step", [1, 2, 7, 1000])
def test_the_scanner_packs_resp2_and_resp3_replies_however_they_arrive(step: int) -> None:
    resp2 = b"*4\r\n$3\r\none\r\n$-1\r\n$0\r\n\r\n$5\r\na\r\nbc\r\n"
    resp3 = resp2.replace(b"$-1\r\n", b"_\r\n")
    packed = (
        (3).to_bytes(4, "little")
        + b"\xff\xff\xff\xff"
        + (0).to_bytes(4, "little")
        + (5).to_bytes(4, "little")
        + b"onea\r\nbc"
    )
    assert _scanned(resp2, 4, step) == (packed, 1)
    assert _scanned(resp3, 4, step) == (packed, 1)
    assert _scanned(b"*0\r\n", 0, step) == (b"", 0)
    assert _scanned(b"-MOVED 3999 127.0.0.1:6381\r\n", 4, step) == "MOVED 3999 127.0.0.1:6381"
    assert _scanned(b"!10\r\nERR a\r\nb c\r\n", 4, step) == "ERR a\r\nb c"


@needs_c
@pytest.mark.parametrize(
    "bad",
    [
        b"*3\r\n$1\r\na\r\n$1\r\nb\r\n",  # fewer elements than asked
        b"+OK\r\n",
        b":12\r\n",
        b"*2\r\n:1\r\n$1\r\na\r\n",
        b"*2\r\n$1\r\nab\r\n$1\r\na\r\n",  # a length that lies
        b"*2\r\n$-2\r\n$1\r\na\r\n",
        b"*2\r\n$1x\r\na\r\n$1\r\na\r\n",
        b"*2\r\n$99999999999999999999\r\n",
        b"*2\r\n$1\r\na\r\n_x\r\n",
    ],
)
def test_the_scanner_refuses_what_is_not_an_array_of_values(bad: bytes) -> None:
    with pytest.raises(ValueError):
        _scanned(bad, 2, 1)
    with pytest.raises(ValueError):
        _scanned(bad, 2, len(bad))


@needs_c
def test_the_scanner_checks_its_state_and_lengths() -> None:
    assert scan is not None
    # Bytes past the reply, read with its end (nothing else was asked on the connection).
    for bad in [b"*1\r\n$1\r\na\r\n+PONG\r\n", b"-ERR one\r\n-ERR two\r\n"]:
        with pytest.raises(ValueError):
            scan(bad, len(bad), 1, (0, -1))
    for used, state in [(0, (0, -1)), (5, (0, -1)), (3, (4, 0)), (3, (0, 3)), (3, (0, -2))]:
        with pytest.raises(ValueError):
            scan(b"*2\r\n", used, 2, state)
    with pytest.raises(TypeError):
        scan(b"*2\r\n", 4, 2, [0, -1])
    assert scan(bytearray(b"*1\r\n$2\r\nok\r\n"), 12, 1, (0, -1)) == (b"\x02\0\0\0ok", 0)
    # A state that skips elements, or never read the header: every element is read again.
    whole = b"*3\r\n$2\r\nok\r\n$5000\r\n" + b"x" * 5000 + b"\r\n$1\r\nz\r\n"
    broken = whole[:9] + b"\r\n" + whole[11:]  # its first value's length lies
    for state in [(len(whole) - 7, 2), (4, 2), (0, 2), (len(whole) - 7, 0)]:
        for reply_bytes in (whole, broken):
            try:
                found = scan(reply_bytes, len(reply_bytes), 3, state)
            except ValueError:
                continue
            # Not whole yet, or the reply's true values: never the broken one's.
            assert type(found[0]) is int or (
                reply_bytes is whole and found == scan(whole, len(whole), 3, (0, -1))
            ), (state, found)
    with pytest.raises(ValueError):
        scan(b"$1\r\nz\r\n", 7, 1, (0, 0))


@needs_c
def test_an_hmget_is_packed_in_c_as_in_python(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = [0, -1, 9, 10, -10, 99, 2**63 - 1, -(2**63), *range(-3000, 3000, 7)]
    for indexes in ([], asked, tuple(asked)):
        in_c = reply.hmget("shmfs:{12}:vars", list(indexes))
        with monkeypatch.context() as patched:
            patched.setattr(hotpath, "resp_hmget", lambda: None)
            assert reply.hmget("shmfs:{12}:vars", list(indexes)) == in_c
    pack = hotpath.resp_hmget()
    assert pack is not None and pack(b"k", tuple(asked)) == reply.hmget("k", asked)
    assert pack(b"k", [1, True]) is None and pack(b"k", [2**64]) is None
