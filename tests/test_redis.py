"""redis-only behaviour: a server that goes away and comes back, the lock's lease (renewal,
expiry of holders elsewhere, fencing of a holder that stalled past it), who is trusted, secrets
in URLs, and the watcher's descriptor. These have no counterpart on tmpfs or sysv, whose locks
the kernel frees and whose files carry an owner."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import shmfs
from bench.redis_server import RedisServer
from tests.conftest import client_commands, segment_ref
from tests.redis_proxy import Proxy
from tests.redis_workers import hold_then_write, incr_many, incr_through_outages

redis = pytest.importorskip("redis")

WAIT = 60
REPO = Path(shmfs.__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_leaked_keys(redis_leak_guard: None) -> None:
    """Every test here: ``redis_leak_guard`` (tests/conftest.py)."""


@pytest.fixture
def private_server() -> Iterator[Callable[..., str]]:
    """Start (and restart) a redis-server of this test's own, persisting to its directory."""
    directory = tempfile.mkdtemp(prefix="shmfs-redis-own-")
    servers: list[RedisServer] = []

    def start(perm: str = "700", port: int = 0) -> str:
        server = RedisServer.start(directory, persist=True, socket_perm=perm, port=port)
        servers.append(server)
        return server.url

    def stop() -> None:
        for server in servers:
            server.stop()

    def crash() -> None:
        """SIGKILL: the server saves nothing more than its append-only file holds."""
        servers[-1].process.kill()
        servers[-1].process.wait(WAIT)

    start.stop = stop  # type: ignore[attr-defined]
    start.crash = crash  # type: ignore[attr-defined]
    start.process = lambda: servers[-1].process  # type: ignore[attr-defined]
    yield start
    stop()
    shutil.rmtree(directory, ignore_errors=True)


# ------------------------------------------------------------------------------------- failures


def test_server_restart_is_survived(private_server: Callable[..., str], key: int) -> None:
    url = private_server()
    seg = shmfs.attach(key, 1 << 20, backend="redis", root=url)
    seg[1] = "before"
    private_server.stop()  # type: ignore[attr-defined]
    with pytest.raises(shmfs.BackendUnavailable) as info:
        seg[2] = "while down"
    assert url.removeprefix("unix://") in str(info.value)
    with pytest.raises(shmfs.BackendUnavailable):
        seg.get(1)
    private_server()
    assert seg[1] == "before"  # the next call reconnects
    seg[2] = "after"
    assert seg.incr(3) == 1
    assert seg[2] == "after"
    seg.destroy()


def test_a_restart_without_persistence_says_the_data_is_gone(key: int) -> None:
    directory = tempfile.mkdtemp(prefix="shmfs-redis-volatile-")
    try:
        server = RedisServer.start(directory)  # saves nothing
        seg = shmfs.attach(key, 4096, backend="redis", root=server.url, codec="json")
        seg[1] = "lost"
        server.stop()
        server = RedisServer.start(directory)
        try:
            for call in (lambda: seg.get(1), lambda: seg.put(1, "x"), seg.stats):
                with pytest.raises(shmfs.SegmentNotFound, match="without persistence"):
                    call()
        finally:
            seg.detach()
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_after_a_crash_and_restart_a_live_clients_lock_is_not_waited_out(
    private_server: Callable[..., str], key: int
) -> None:
    """The holder leaves its block while the server is down, so its release is lost; the
    append-only file brings the lock back with the restart. Its holder lives, and releases it
    as soon as the server is back: no writer waits for the lease to expire."""
    url = private_server()
    holder = shmfs.attach(key, 4096, backend="redis", root=url, codec="json")
    writer = shmfs.attach(key, backend="redis", root=url, codec="json")
    try:
        block = holder.lock()
        block.__enter__()
        holder[1] = "under the lock"
        private_server.crash()  # type: ignore[attr-defined]
        block.__exit__(None, None, None)  # its release cannot reach the server: no error
        private_server()
        began = time.monotonic()
        writer.put(1, "after the restart")
        with writer.lock(timeout=WAIT):
            waited = time.monotonic() - began
        assert waited < 1.5, f"a writer waited {waited:.1f} s on a released lock"
        assert holder[1] == "after the restart"
    finally:
        holder.detach()
        writer.destroy()


def test_sigkill_and_restart_under_four_writers_loses_no_acknowledged_increment(
    private_server: Callable[..., str], key: int
) -> None:
    """Append-only file synced on every write; 4 processes incrementing; the server SIGKILLed
    and restarted twice. Every acknowledged increment is there; the ones whose outcome was
    unknown are there or not; none is counted twice; no call waits out a lease."""
    url = private_server()
    seg = shmfs.attach(key, 4096, backend="redis", root=url, codec="json")
    seg[1] = 0
    ctx = multiprocessing.get_context("spawn")
    acks = 150
    try:
        with ctx.Pool(4) as pool:
            pending = pool.starmap_async(incr_through_outages, [(url, key, 1, acks)] * 4)
            for target in (100, 300):
                deadline = time.monotonic() + WAIT
                while seg.get(1) < target and time.monotonic() < deadline:
                    time.sleep(0.01)  # waiting for progress, not ordering events
                private_server.crash()  # type: ignore[attr-defined]
                private_server()
            results = pending.get(WAIT * 2)
        made = sum(r["made"] for r in results)
        unknown = sum(r["unknown"] for r in results)
        assert made == 4 * acks
        assert made <= seg[1] <= made + unknown
        # A lease waited out would take lock_expiry (10 s); the margin is for this loaded VM.
        assert max(r["longest"] for r in results) < 5.0
    finally:
        seg.destroy()


def test_password_is_never_shown(key: int) -> None:
    for url in (
        "redis://:hunter2@127.0.0.1:1/0",
        "redis://user:hunter2@127.0.0.1:1/0",
        "redis://127.0.0.1:1/0?password=hunter2",
        "unix://:hunter2@/nonexistent/redis.sock",
        "unix:///nonexistent/redis.sock?db=0&password=hunter2",
    ):
        with pytest.raises(shmfs.BackendUnavailable) as info:
            shmfs.attach(key, backend="redis", root=url)
        assert "hunter2" not in str(info.value) and "***" in str(info.value), url
        assert "hunter2" not in info.value.url and "***" in info.value.url
        assert isinstance(info.value.__cause__, redis.ConnectionError)
        done = subprocess.run(
            [sys.executable, "-m", "shmfs", "--backend", "redis", "--root", url, "get", "1"],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=WAIT,
            check=False,
        )
        assert done.returncode != 0 and "***" in done.stderr
        assert "hunter2" not in done.stderr + done.stdout


def test_a_password_is_redacted_in_stats_and_a_wrong_one_says_so(
    private_server: Callable[..., str], key: int
) -> None:
    url = private_server()
    admin = redis.Redis.from_url(url)
    admin.config_set("requirepass", "hunter2")
    admin.close()
    path = url.removeprefix("unix://")
    try:
        with shmfs.attach(
            key, 4096, backend="redis", root=f"unix://{path}?password=hunter2"
        ) as seg:
            stats = seg.stats()
            assert "hunter2" not in repr(stats) and "***" in stats["location"]
            assert "hunter2" not in repr(
                shmfs.segments(backend="redis", root=f"unix://{path}?password=hunter2")
            )
            seg.destroy()
        with pytest.raises(shmfs.BackendUnavailable, match="authentication failed") as info:
            shmfs.attach(key, backend="redis", root=f"unix://{path}?password=wrong")
        assert "wrong" not in str(info.value)
    finally:
        with contextlib.closing(redis.Redis.from_url(url, password="hunter2")) as admin:
            admin.config_set("requirepass", "")


def test_a_stalled_server_fails_a_call_within_seconds(
    private_server: Callable[..., str], key: int
) -> None:
    url = private_server()
    seg = shmfs.attach(key, 4096, backend="redis", root=url, codec="json")
    quick = shmfs.attach(key, backend="redis", root=f"{url}?socket_timeout=0.5", codec="json")
    server = private_server.process()  # type: ignore[attr-defined]
    try:
        server.send_signal(signal.SIGSTOP)
        began = time.monotonic()
        with pytest.raises(shmfs.BackendUnavailable):
            quick.put(1, 1)
        assert time.monotonic() - began < 3
        began = time.monotonic()
        with pytest.raises(shmfs.BackendUnavailable):
            seg.get(1)
        assert time.monotonic() - began < 12  # the default: 5 s for the reply, not 30
    finally:
        server.send_signal(signal.SIGCONT)
        quick.detach()
        seg.destroy()


def test_bad_url_and_options_are_refused(redis_url: str, key: int) -> None:
    with pytest.raises(shmfs.InvalidArgument):
        shmfs.attach(key, backend="redis", root="http://example.invalid/")
    for option in ("socket_timout=1", "pasword=x"):
        with pytest.raises(shmfs.InvalidArgument, match="unknown option"):
            shmfs.attach(key, backend="redis", root=f"{redis_url}?{option}")
    with pytest.raises(shmfs.InvalidArgument):
        shmfs.attach(key, backend="redis", root="redis://127.0.0.1:notaport/0")
    with pytest.raises(shmfs.InvalidArgument):
        shmfs.attach(key, backend="redis", root=redis_url, sem_key=5)
    for expiry in (0, -1, float("nan"), "10", True):
        with pytest.raises(shmfs.InvalidArgument):
            shmfs.attach(key, backend="redis", root=redis_url, lock_expiry=expiry)
    with pytest.raises(shmfs.InvalidArgument):
        shmfs.attach(key, backend="redis", root=redis_url, trust_server="yes")


def test_damaged_metadata_is_corrupt_and_changes_nothing(redis_url: str, key: int) -> None:
    seg = shmfs.attach(key, 4096, backend="redis", root=redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        seg[1] = "kept"
        client.hset(f"shmfs:{{{key}}}:meta", "used", "garbage")
        with pytest.raises(shmfs.CorruptSegment):
            seg[1] = "new"
        with pytest.raises(shmfs.CorruptSegment):
            seg.stats()
        assert seg[1] == "kept"
    finally:
        client.close()
        seg.destroy()


# ------------------------------------------------------------------------------------ the lease


def test_a_live_holder_keeps_the_lock_past_its_expiry(redis_url: str, key: int) -> None:
    """The renewer extends a held lease: exclusion lasts as long as the critical section."""
    holder = shmfs.attach(key, 4096, backend="redis", root=redis_url, lock_expiry=0.2)
    other = shmfs.attach(key, backend="redis", root=redis_url, lock_expiry=0.2)
    try:
        with holder.lock():
            with pytest.raises(shmfs.LockTimeout):
                other.lock(timeout=1.0).__enter__()  # five expiries
            holder[1] = "still the holder"  # the fencing check passes: the lease is ours
        with other.lock(timeout=5):
            other[1] = "next holder"
        assert holder[1] == "next holder"
    finally:
        other.detach()
        holder.destroy()


def test_a_stalled_holder_loses_the_lock_and_its_late_write_is_refused(
    redis_url: str, key: int, spawn_ctx: Any
) -> None:
    seg = shmfs.attach(key, 4096, backend="redis", root=redis_url)
    held, go, result = spawn_ctx.Event(), spawn_ctx.Event(), spawn_ctx.Queue()

    child = spawn_ctx.Process(target=_put_result, args=(result, segment_ref(seg), held, go, 0.5))
    child.start()
    try:
        assert held.wait(WAIT)
        os.kill(child.pid, signal.SIGSTOP)  # stalled: its renewer stops with it
        with seg.lock(timeout=WAIT):  # had once the stalled holder's lease runs out
            seg[1] = "new holder"
        os.kill(child.pid, signal.SIGCONT)
        go.set()
        assert result.get(timeout=WAIT) == "refused"
    finally:
        os.kill(child.pid, signal.SIGCONT)
        child.join(WAIT)
        if child.is_alive():
            child.kill()
    assert seg[1] == "new holder"
    seg.destroy()


def _put_result(queue: Any, *args: Any) -> None:
    queue.put(hold_then_write(*args))


def test_a_dead_pid_in_another_pid_namespace_is_not_taken_for_dead(
    redis_url: str, key: int
) -> None:
    """Containers with host networking share the hostname, not the pids: only the expiry
    frees such a holder's lock."""
    from shmfs.backends.redis import lease as backend  # noqa: PLC0415  # the module under test

    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    seg = shmfs.attach(key, 4096, backend="redis", root=redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        here = f"{backend.HOST}:{dead.pid}:{backend.SPACE}:abcd"
        elsewhere = f"{backend.HOST}:{dead.pid}:another-space:abcd"
        client.set(f"shmfs:{{{key}}}:lock", here, px=30_000)
        with seg.lock(timeout=5):  # our namespace, dead pid: freed at once
            pass
        client.set(f"shmfs:{{{key}}}:lock", elsewhere, px=500)
        with pytest.raises(shmfs.LockTimeout) as info, seg.lock(timeout=0.1):
            pass
        assert f"pid {dead.pid} on {backend.HOST}" in str(info.value)
        assert info.value.holder_pid is None
        with seg.lock(timeout=5):  # at expiry
            pass
    finally:
        client.close()
        seg.destroy()


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare"
)
def test_sigkilled_holder_in_another_pid_namespace_frees_the_lock_within_its_expiry(
    redis_url: str, key: int
) -> None:
    expiry = 2.0
    seg = shmfs.attach(key, 4096, backend="redis", root=redis_url)
    script = (
        "import shmfs, time\n"
        f"seg = shmfs.attach({key}, backend='redis', root={redis_url!r}, lock_expiry={expiry})\n"
        "with seg.lock():\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n"  # holds until killed
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        assert holder.stdout is not None
        assert select.select([holder.stdout], [], [], WAIT)[0], "holder never took the lock"
        assert holder.stdout.readline() == b"held\n"
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # unshare and the holder, in one go
        holder.wait(WAIT)
        if holder.stdout is not None:
            holder.stdout.close()
    with pytest.raises(shmfs.LockTimeout):  # its pid means nothing here: not freed at once
        seg.lock(timeout=0.2).__enter__()
    began = time.monotonic()
    with seg.lock(timeout=WAIT):
        elapsed = time.monotonic() - began
    assert elapsed < expiry
    seg.destroy()


# ---------------------------------------------------------------------------------------- trust


def test_pickles_need_a_private_server_or_trust(
    private_server: Callable[..., str], key: int
) -> None:
    url = private_server(perm="777")  # anyone on the host may connect and write
    seg = shmfs.attach(key, 1 << 20, backend="redis", root=url)
    seg[1] = {"pickled": True}
    with pytest.raises(shmfs.UnsafeSegment) as info:
        seg.get(1)
    assert "trust_server=True" in str(info.value)
    with shmfs.attach(key, backend="redis", root=url, codec="json") as plain:
        plain[3] = {"json": True}
    assert seg[3] == {"json": True}
    with shmfs.attach(key, backend="redis", root=url, trust_server=True) as trusting:
        assert trusting[1] == {"pickled": True}
    with shmfs.attach(key, backend="redis", root=url, secret="s") as signed:
        signed[4] = {"signed": True}
        assert signed[4] == {"signed": True}
    seg.destroy()


def test_a_private_socket_is_not_enough_when_the_server_also_listens_on_tcp(
    private_server: Callable[..., str], key: int
) -> None:
    with socket.socket() as probe:  # a free loopback port for the server
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = private_server(perm="700", port=port)
    with shmfs.attach(key, 4096, backend="redis", root=url) as seg:
        seg[1] = "pickled"
        with pytest.raises(shmfs.UnsafeSegment):
            seg.get(1)
        seg.destroy()


def _free_port() -> int:
    with socket.socket() as probe:  # a free loopback port for the server
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _plant_pickle(port: int, key: int, index: int) -> None:
    """Write, over TCP (where any local user could), a frame shmfs would unpickle."""
    from shmfs import codecs, frame  # noqa: PLC0415  # only this helper forges frames

    planted = frame.encode(codecs.get_codec("cloudpickle"), {"planted": True}, None)
    with contextlib.closing(redis.Redis(host="127.0.0.1", port=port)) as tcp:
        tcp.hset(f"shmfs:{{{key}}}:vars", str(index), bytes(planted))


def test_a_server_restarted_with_a_tcp_listener_is_no_longer_trusted(
    private_server: Callable[..., str], key: int
) -> None:
    url = private_server()
    seg = shmfs.attach(key, 4096, backend="redis", root=url)
    try:
        seg[1] = {"mine": True}
        assert seg[1] == {"mine": True}  # a private socket, no TCP: trusted
        private_server.stop()  # type: ignore[attr-defined]
        port = _free_port()
        private_server(port=port)
        _plant_pickle(port, key, 2)
        with pytest.raises(shmfs.UnsafeSegment):
            seg.get(2)  # judged again on the new connection
        with pytest.raises(shmfs.UnsafeSegment):
            seg.get(1)
    finally:
        seg.destroy()


def test_a_server_that_gains_a_tcp_listener_at_run_time_is_no_longer_trusted(
    private_server: Callable[..., str], key: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``CONFIG SET port`` keeps our connection: the verdict is judged again after
    ``TRUST_RECHECK`` seconds (made 0 here, so that no test waits for it)."""
    from shmfs.backends.redis import backend  # noqa: PLC0415  # the module under test

    url = private_server()
    seg = shmfs.attach(key, 4096, backend="redis", root=url)
    admin = redis.Redis.from_url(url)
    try:
        seg[1] = {"mine": True}
        assert seg[1] == {"mine": True}
        port = _free_port()
        admin.config_set("port", port)
        _plant_pickle(port, key, 2)
        monkeypatch.setattr(backend, "TRUST_RECHECK", 0.0, raising=False)
        with pytest.raises(shmfs.UnsafeSegment):
            seg.get(2)
        admin.config_set("port", 0)
        assert seg[1] == {"mine": True}  # private again: trusted again
    finally:
        admin.close()
        seg.destroy()


def test_a_private_socket_on_a_server_without_tcp_is_trusted(redis_url: str, key: int) -> None:
    with shmfs.attach(key, 4096, backend="redis", root=redis_url) as seg:
        seg[1] = {"pickled": True}
        assert seg[1] == {"pickled": True}
        seg.destroy()


# -------------------------------------------------------------------------------------- waiting


def test_async_waiters_sleep_on_the_subscription_socket(redis_url: str, key: int) -> None:
    seg = shmfs.attach(key, 4096, backend="redis", root=redis_url)
    assert seg._backend is not None
    watcher = seg._backend.watcher()
    try:
        fd = watcher.fileno()
        assert isinstance(fd, int)
        stat = os.fstat(fd)
        assert stat.st_mode & 0o170000 == 0o140000  # a socket
    finally:
        watcher.close()
    written = threading.Event()

    def write() -> None:
        with shmfs.attach(key, backend="redis", root=redis_url) as other:
            written.wait(WAIT)
            other[1] = "news"

    async def main() -> Any:
        task = asyncio.ensure_future(seg.wait_async(1, timeout=WAIT))
        await asyncio.sleep(0)  # the waiter registers before the write is allowed
        written.set()
        return await task

    thread = threading.Thread(target=write)
    thread.start()
    try:
        assert asyncio.run(main()) == "news"
    finally:
        written.set()
        thread.join(WAIT)
    seg.destroy()


# ------------------------------------------------------------------- single operations' outcome


def _incr_retrying_when_not_made(seg: shmfs.Segment, proxy: Proxy) -> None:
    """A careful caller: retries an ``incr`` only when the error says it was not made."""
    try:
        seg.incr(1)
    except shmfs.BackendUnavailable as exc:
        proxy.heal()
        if getattr(exc, "committed", False) is False:
            seg.incr(1)


@pytest.mark.parametrize("on_server", [True, False])
def test_a_change_that_reached_the_server_is_never_reported_as_not_made(
    redis_url: str, proxy: Proxy, key: int, on_server: bool
) -> None:
    """The server gets an incr and the connection dies before its reply: the call cannot say it
    failed (a retrying caller would count twice); it says the outcome is unknown. Whether the
    server adds (a small integer) or the client does (past what the server adds)."""
    from shmfs.backends.redis import ops  # noqa: PLC0415  # the script the request names

    seg = shmfs.attach(key, 4096, backend="redis", root=proxy.url, codec="json")
    start = 7_000_000_001 if on_server else 2**53 + 1
    try:
        seg[1] = start
        seg.incr(2)  # the server learns the script: the marked request is not refused unrun
        # The request that makes the change: the server's script, or the new value written.
        proxy.marker = ops.ADD_INT[3].sha.encode() if on_server else str(start + 1).encode()
        _incr_retrying_when_not_made(seg, proxy)
        assert proxy.tripped.is_set()
        assert seg[1] == start + 1  # counted once
    finally:
        proxy.heal()
        seg.destroy()


def test_a_reply_lost_after_the_change_says_the_outcome_is_unknown(
    redis_url: str, proxy: Proxy, key: int
) -> None:
    seg = shmfs.attach(key, 4096, backend="redis", root=proxy.url, codec="json")
    client = redis.Redis.from_url(redis_url)
    try:
        proxy.marker = b"marked value"
        with pytest.raises(shmfs.BackendUnavailable) as info:
            seg.put(1, "marked value")
        assert info.value.committed is None
        assert "may or may not have been made" in str(info.value)
        proxy.heal()
        assert seg[1] == "marked value"  # it was made, once
        assert client.hget(f"shmfs:{{{key}}}:gen", "1") == b"1"
        proxy.marker = None
    finally:
        proxy.heal()
        client.close()
        seg.destroy()


def test_a_server_that_cannot_be_reached_says_nothing_was_changed(key: int) -> None:
    directory = tempfile.mkdtemp(prefix="shmfs-redis-none-")
    try:
        server = RedisServer.start(directory)
        seg = shmfs.attach(key, 4096, backend="redis", root=server.url, codec="json")
        server.stop()
        for call in (lambda: seg.put(1, 2), lambda: seg.incr(1), lambda: seg.remove(1)):
            with pytest.raises(shmfs.BackendUnavailable) as info:
                call()
            assert info.value.committed is False
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_single_operations_take_no_lock_and_send_one_script(redis_url: str, key: int) -> None:
    """put, remove, add, cas and a warm incr are one script call each: no lock key ever set."""
    seg = shmfs.attach(key, 4096, backend="redis", root=redis_url, codec="json")
    client = redis.Redis.from_url(redis_url)
    monitor = client.monitor()
    try:
        seg.put(1, 5)
        seg.incr(1)  # warm: the put's version is remembered
        seg.add(2, "x")
        seg.cas(2, "x", "y")
        seg.remove(2)
        client.ping()  # its connection is made before the monitor starts
        with monitor as m:
            seg.put(1, 5)
            seg.incr(1)
            seg.add(2, "x")
            seg.cas(2, "x", "y")
            seg.remove(2)
            commands = client_commands(client, m)
        assert commands == ["EVALSHA"] * 5
        assert seg[1] == 6
    finally:
        client.close()
        seg.destroy()


def test_writers_wait_out_an_explicit_lock_and_are_fenced_inside_it(
    redis_url: str, key: int
) -> None:
    seg = shmfs.attach(key, 4096, backend="redis", root=redis_url, codec="json")
    other = shmfs.attach(key, backend="redis", root=redis_url, codec="json", lock_timeout=0.2)
    try:
        with seg.lock():
            seg[1] = 1  # the holder writes through its own lock
            assert seg.incr(1) == 2
            for call in (
                lambda: other.put(1, 9),
                lambda: other.incr(1),
                lambda: other.remove(1),
                lambda: other.add(3, 1),
                lambda: other.cas(1, 2, 9),
                other.clear,
            ):
                with pytest.raises(shmfs.LockTimeout) as info:
                    call()
                assert "0.2 s" in str(info.value)
        assert other.incr(1) == 3  # free again
    finally:
        other.detach()
        seg.destroy()


def test_optimistic_updates_are_exact_across_processes(redis_url: str, key: int) -> None:
    seg = shmfs.attach(key, 4096, backend="redis", root=redis_url)
    ctx = multiprocessing.get_context("spawn")
    ref = segment_ref(seg)
    try:
        with ctx.Pool(4) as pool:
            results = pool.starmap(incr_many, [(ref, 1, 300)] * 4)
        assert results == [300] * 4
        assert seg[1] == 1200
        assert seg.cas(1, 1200, "done") and seg[1] == "done"
        assert not seg.cas(1, 1200, "again")
    finally:
        seg.destroy()


def test_update_recomputes_from_the_value_another_process_wrote(redis_url: str, key: int) -> None:
    """A remembered version that went stale is refused, and fn runs again on the new value."""
    seg = shmfs.attach(key, 4096, backend="redis", root=redis_url)
    other = shmfs.attach(key, backend="redis", root=redis_url)
    try:
        seg[1] = [1]
        seg.update(1, lambda old: [*old, 2])  # seg now remembers [1, 2]
        other[1] = ["other"]
        seen: list[Any] = []
        assert seg.update(1, lambda old: seen.append(old) or [*old, 3]) == ["other", 3]
        assert seen[-1] == ["other"]
        assert not seg.cas(1, [1, 2], "stale")  # decided on what is there now
        assert seg.cas(1, ["other", 3], "fresh")
        other.remove(1)
        with pytest.raises(shmfs.VariableNotFound):
            seg.update(1, lambda old: old)
        assert seg.incr(1) == 1
    finally:
        other.detach()
        seg.destroy()


# --------------------------------------------------------------------------------------- memory


def test_at_maxmemory_a_put_is_segment_full_and_removal_still_works(
    private_server: Callable[..., str], key: int
) -> None:
    url = private_server()
    admin = redis.Redis.from_url(url)
    seg = shmfs.attach(key, 1 << 30, backend="redis", root=url, codec="raw")
    chunk = b"m" * (64 << 10)
    try:
        for index in range(4):
            seg[index] = chunk
        admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) + (1 << 20))
        fillers = 0
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            while True:  # other data fills the server to its limit
                admin.set(f"filler:{fillers}", b"f" * 512)  # small: no big request buffer
                fillers += 1
        with pytest.raises(shmfs.SegmentFull, match="maxmemory") as info:
            seg[9] = b"s" * 4096
        assert info.value.key == key
        assert all(seg[index] == chunk for index in range(4))  # nothing lost
        assert 9 not in seg  # nothing half written
        with seg.lock():
            pass  # the lock is had at the limit too
        seg.remove(0)
        seg.clear()
        assert len(seg) == 0
        admin.delete(*(f"filler:{n}" for n in range(fillers)))
        seg[0] = chunk  # room again
        seg.destroy()
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()


def test_an_evicting_server_is_refused_unless_accepted(
    private_server: Callable[..., str], key: int
) -> None:
    url = private_server()
    admin = redis.Redis.from_url(url)
    try:
        for policy in ("allkeys-lru", "volatile-lru"):
            admin.config_set("maxmemory-policy", policy)
            with pytest.raises(shmfs.UnsafeSegment, match=policy):
                shmfs.attach(key, backend="redis", root=url)
            with pytest.warns(RuntimeWarning, match=policy):
                seg = shmfs.attach(key, backend="redis", root=url, allow_eviction=True)
            seg.destroy()
        with pytest.raises(shmfs.InvalidArgument):
            shmfs.attach(key, backend="redis", root=url, allow_eviction="yes")
    finally:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.close()


@pytest.mark.parametrize("lost", ["vars", "gen", "meta"])
def test_a_partly_evicted_segment_is_corrupt_never_silent(
    redis_url: str, key: int, lost: str
) -> None:
    seg = shmfs.attach(key, 4096, backend="redis", root=redis_url, codec="json")
    client = redis.Redis.from_url(redis_url)
    try:
        seg[1] = "kept"
        seg[2] = 5
        client.delete(f"shmfs:{{{key}}}:{lost}")  # what an evicting server does to one key
        for call in (
            lambda: seg.get(3),
            lambda: seg.put(3, "x"),
            lambda: seg.incr(2),
            lambda: seg.incr(4),  # no value there: the gate asks what exists
            lambda: seg.remove(3),
            *((lambda: seg.get(1),) if lost == "vars" else ()),  # the value itself is gone
        ):
            with pytest.raises(shmfs.CorruptSegment, match="evicted"):
                call()
        if lost != "vars":
            assert seg.get(1) == "kept"  # a value still whole is still read
    finally:
        seg.destroy()  # what is left can always go
        assert not redis_keys_of(client, key)
        client.close()


def redis_keys_of(client: Any, key: int) -> list[bytes]:
    return list(client.scan_iter(match=f"shmfs:{{{key}}}:*"))


# ------------------------------------------------------------------------------------ topologies


@pytest.fixture
def tls_server() -> Iterator[tuple[str, str]]:
    """A redis-server of our own listening on TLS only, with a self-signed certificate:
    ``(rediss URL, certificate path)``."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make a certificate")
    directory = tempfile.mkdtemp(prefix="shmfs-redis-tls-")
    cert, private = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", private, "-out", cert, "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
        timeout=WAIT,
    )
    port = _free_port()
    server = subprocess.Popen(
        [
            *("redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"),
            *("--tls-cert-file", cert, "--tls-key-file", private, "--tls-ca-cert-file", cert),
            *("--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    try:
        deadline = time.monotonic() + WAIT
        while True:  # the server gives no other sign that it listens
            try:
                with contextlib.closing(redis.Redis.from_url(url)) as probe:
                    probe.ping()
                break
            except redis.ConnectionError:
                assert server.poll() is None and time.monotonic() < deadline, "no TLS server"
                time.sleep(0.01)
        yield url, cert
    finally:
        server.terminate()
        server.wait(WAIT)
        shutil.rmtree(directory, ignore_errors=True)


def test_tls_works_and_is_never_trusted_for_pickles(tls_server: tuple[str, str], key: int) -> None:
    url, _ = tls_server
    seg = shmfs.attach(key, 4096, backend="redis", root=url, codec="json")
    try:
        seg[1] = {"over": "tls"}
        assert seg[1] == {"over": "tls"}
        assert seg.incr(2) == 1 and seg.cas(2, 1, 5) and seg[2] == 5
        with seg.lock(timeout=5):
            seg[3] = "locked"
        assert seg.stats()["location"].startswith("rediss://127.0.0.1:")
        with shmfs.attach(key, backend="redis", root=url) as pickling:
            pickling[4] = {"pickled": True}
            with pytest.raises(shmfs.UnsafeSegment):
                pickling.get(4)  # any local user can reach a TCP port
        with pytest.raises(shmfs.BackendUnavailable):
            shmfs.attach(key, backend="redis", root=url.split("?")[0])  # no CA: refused
    finally:
        seg.destroy()


def test_cas_with_an_expected_value_the_codec_cannot_encode_compares_values(
    redis_url: str, key: int
) -> None:
    seg = shmfs.attach(key, 4096, backend="redis", root=redis_url, codec="json")
    try:
        seg[1] = "text"
        assert not seg.cas(1, b"text", "new")  # json cannot encode bytes: no error, no match
        assert seg.cas(1, "text", "new") and seg[1] == "new"
        seg[2] = 1.0
        assert seg.cas(2, 1, "int matches float")  # equal values, different encodings
        seg[3] = float("nan")
        assert not seg.cas(3, float("nan"), "nan")  # NaN != NaN, though its bytes match
    finally:
        seg.destroy()
