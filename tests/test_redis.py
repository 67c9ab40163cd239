"""redis-only behaviour: a server that goes away and comes back, the lock's lease (renewal,
expiry of holders elsewhere, fencing of a holder that stalled past it), who is trusted, secrets
in URLs, and the watcher's descriptor. These have no counterpart on tmpfs or sysv, whose locks
the kernel frees and whose files carry an owner."""

from __future__ import annotations

import asyncio
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
from tests.conftest import redis_keys, segment_ref
from tests.redis_workers import hold_then_write

redis = pytest.importorskip("redis")

WAIT = 60
REPO = Path(shmfs.__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def redis_leak_guard(redis_url: str) -> Iterator[None]:
    """Fail a test that leaves keys on the shared test server."""
    before = set(redis_keys(redis_url))
    yield
    leaked = set(redis_keys(redis_url)) - before
    if leaked:
        redis.Redis.from_url(redis_url).delete(*leaked)
    assert not leaked, f"test leaked Redis keys: {sorted(leaked)}"


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

    start.stop = stop  # type: ignore[attr-defined]
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


def test_password_is_never_shown(key: int) -> None:
    with pytest.raises(shmfs.BackendUnavailable) as info:
        shmfs.attach(key, backend="redis", root="redis://:hunter2@127.0.0.1:1/0")
    assert "hunter2" not in str(info.value) and "***" in str(info.value)
    assert isinstance(info.value.__cause__, redis.ConnectionError)


def test_bad_url_and_options_are_refused(redis_url: str, key: int) -> None:
    with pytest.raises(shmfs.InvalidArgument):
        shmfs.attach(key, backend="redis", root="http://example.invalid/")
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
