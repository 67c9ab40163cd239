"""redis-only behaviour: a server that goes away and comes back, locks of holders on other
hosts, who is trusted, and secrets in URLs."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest

import shmfs

redis = pytest.importorskip("redis")


@pytest.fixture
def private_server() -> Iterator[Callable[..., str]]:
    """Start (and restart) a redis-server of this test's own, persisting to its directory."""
    directory = tempfile.mkdtemp(prefix="shmfs-redis-own-")
    path = os.path.join(directory, "redis.sock")
    processes: list[subprocess.Popen[bytes]] = []

    def start(perm: str = "700") -> str:
        server = shutil.which("redis-server")
        if server is None:
            pytest.fail("redis-server is not installed")
        process = subprocess.Popen(
            [
                server,
                "--port",
                "0",
                "--unixsocket",
                path,
                "--unixsocketperm",
                perm,
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                directory,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(process)
        client = redis.Redis(unix_socket_path=path)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.01)
        client.close()
        return f"unix://{path}"

    def stop() -> None:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(20)

    start.stop = stop  # type: ignore[attr-defined]
    yield start
    stop()
    shutil.rmtree(directory, ignore_errors=True)


def test_server_restart_is_survived(private_server: Callable[..., str], key: int) -> None:
    url = private_server()
    seg = shmfs.attach(key, 1 << 20, backend="redis", root=url)
    seg[1] = "before"
    private_server.stop()  # type: ignore[attr-defined]
    with pytest.raises(shmfs.BackendUnavailable) as info:
        seg[2] = "while down"
    assert url.removeprefix("unix://") in str(info.value)
    private_server()
    assert seg[1] == "before"  # the next call reconnects
    seg[2] = "after"
    assert seg[2] == "after"
    seg.destroy()


def test_lock_of_a_holder_on_another_host_expires(redis_url: str, key: int) -> None:
    seg = shmfs.attach(key, 4096, backend="redis", root=redis_url, lock_expiry=5)
    client = redis.Redis.from_url(redis_url)
    try:
        # What a holder on another machine that died leaves: its token, with an expiry.
        client.set(f"shmfs:{{{key}}}:lock", "elsewhere:1234:abcd", px=400)
        with pytest.raises(shmfs.LockTimeout) as info, seg.lock(timeout=0.1):
            pass
        assert "elsewhere:1234" in str(info.value)
        began = time.monotonic()
        with seg.lock(timeout=5):
            pass
        assert time.monotonic() - began < 1.0
    finally:
        client.close()
        seg.destroy()


def test_pickles_need_a_private_socket_or_trust(
    private_server: Callable[..., str], key: int
) -> None:
    url = private_server(perm="777")  # anyone on the host may connect and write
    seg = shmfs.attach(key, 1 << 20, backend="redis", root=url)
    seg[1] = {"pickled": True}
    with pytest.raises(shmfs.UnsafeSegment):
        seg.get(1)
    with shmfs.attach(key, backend="redis", root=url, codec="json") as plain:
        plain[3] = {"json": True}
    assert seg[3] == {"json": True}
    with shmfs.attach(key, backend="redis", root=url, trust_server=True) as trusting:
        assert trusting[1] == {"pickled": True}
    seg.destroy()


def test_password_is_never_shown(key: int) -> None:
    with pytest.raises(shmfs.BackendUnavailable) as info:
        shmfs.attach(key, backend="redis", root="redis://:hunter2@127.0.0.1:1/0")
    assert "hunter2" not in str(info.value) and "***" in str(info.value)


def test_unknown_option_refused(redis_url: str, key: int) -> None:
    with pytest.raises(shmfs.InvalidArgument):
        shmfs.attach(key, backend="redis", root=redis_url, sem_key=5)
