"""Fixtures: a private root under /dev/shm per test, fresh keys, the backend parametrisation, and
a guard that fails any test leaving files behind."""

from __future__ import annotations

import contextlib
import importlib.util
import multiprocessing
import os
import random
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import shmfs
from bench.redis_server import RedisServer, ServerError
from shmfs import hotpath
from tests.redis_proxy import Proxy


def _redis_available() -> bool:
    """redis-server and the redis package are here; under CI they must be (never skip)."""
    return bool(os.environ.get("CI")) or (
        shutil.which("redis-server") is not None and importlib.util.find_spec("redis") is not None
    )


# "tmpfs-pure": tmpfs with the C fast path (shmfs.hotpath) turned off, here and in children, so
# that both paths run every tmpfs test; the test itself sees backend "tmpfs". "sysv-pure" is
# the same for sysv.
BACKENDS = ["tmpfs", "tmpfs-pure", "sysv", "sysv-pure"] + (["redis"] if _redis_available() else [])


def _test_keys() -> range:
    """SysV keys for tests come from this range, so the leak guard can tell ours from anyone
    else's. Under pytest-xdist each worker has a slice of its own: a guard that saw another
    worker's live segment as a leak would fail that test and remove the segment under it."""
    first, width = 0x5E000000, 0x01000000
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return range(first, first + width)
    slices = 64
    share = width // slices
    n = int(worker[2:]) % slices
    return range(first + n * share, first + (n + 1) * share)


TEST_KEYS = _test_keys()


def sysv_objects() -> set[tuple[str, int, int]]:
    """(kind, key, id) of every SysV segment and semaphore set with a test key."""
    found = set()
    for kind in ("shm", "sem"):
        with open(f"/proc/sysvipc/{kind}", encoding="ascii") as table:
            for line in table.readlines()[1:]:
                fields = line.split()
                key = int(fields[0]) & 0xFFFFFFFF
                if key in TEST_KEYS:
                    found.add((kind, key, int(fields[1])))
    return found


@pytest.fixture(autouse=True)
def sysv_leak_guard() -> Iterator[None]:
    """Fail a test that leaves a System V segment or semaphore set with a test key behind."""
    before = sysv_objects()
    yield
    leaked = sysv_objects() - before
    for kind, _, ident in leaked:
        subprocess.run(["ipcrm", "-m" if kind == "shm" else "-s", str(ident)], check=False)
    assert not leaked, f"test leaked System V objects: {sorted(leaked)}"


@pytest.fixture
def root() -> Iterator[str]:
    """A fresh root under /dev/shm; the test fails if anything is left in it afterwards."""
    path = f"/dev/shm/shmfs-test-{uuid.uuid4().hex}"
    os.mkdir(path, 0o700)
    try:
        yield path
        leftovers = sorted(os.listdir(path))
        assert not leftovers, f"test leaked {leftovers} under {path}"
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shared_root(root: str) -> Iterator[str]:
    """A root others may traverse (0711) but not write: what sharing across users needs."""
    os.chmod(root, 0o711)
    yield root
    os.chmod(root, 0o700)


@pytest.fixture
def key() -> int:
    """A segment key no other test uses (tests get private roots, so this only needs to be
    unlikely to collide for backends without roots)."""
    return random.randrange(TEST_KEYS.start, TEST_KEYS.stop - 16)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A redis-server of our own on a unix socket in a private directory, for the session."""
    directory = tempfile.mkdtemp(prefix="shmfs-redis-")
    try:
        try:
            server = RedisServer.start(directory)
        except ServerError as exc:
            # CI installs it (.ci/run), so there a missing server fails; elsewhere it skips.
            missing = shutil.which("redis-server") is None and not os.environ.get("CI")
            (pytest.skip if missing else pytest.fail)(str(exc))
        try:
            yield server.url
        finally:
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def proxy(redis_url: str) -> Iterator[Proxy]:
    """A fault-injecting proxy in front of the test server (see tests/redis_proxy.py)."""
    directory = tempfile.mkdtemp(prefix="shmfs-redis-proxy-")
    made = Proxy(os.path.join(directory, "proxy.sock"), redis_url.removeprefix("unix://"))
    try:
        yield made
    finally:
        made.close()
        shutil.rmtree(directory, ignore_errors=True)


def redis_keys(url: str) -> list[bytes]:
    import redis  # noqa: PLC0415  # only the redis tests need it

    client = redis.Redis.from_url(url)
    try:
        return sorted(client.scan_iter(match="shmfs:*"))
    finally:
        client.close()


def client_commands(client: Any, monitor: Any) -> list[str]:
    """The commands clients sent (not the scripts' own calls) that ``monitor`` (entered) saw
    from its start until a PING that ``client`` sends now."""
    client.ping()
    commands: list[str] = []
    for event in monitor.listen():
        if event["command"] == "PING":
            return commands
        if event.get("client_type") != "lua":
            commands.append(event["command"].split()[0])
    return commands


@pytest.fixture
def redis_leak_guard(redis_url: str) -> Iterator[None]:
    """Fail a test that leaves keys on the shared test server (the redis modules use it for
    every test)."""
    import redis  # noqa: PLC0415  # only the redis tests need it

    before = set(redis_keys(redis_url))
    yield
    leaked = set(redis_keys(redis_url)) - before
    if leaked:
        redis.Redis.from_url(redis_url).delete(*leaked)
    assert not leaked, f"test leaked Redis keys: {sorted(leaked)}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every backend, in turn; on redis, fails a test that leaves keys behind."""
    name = str(request.param)
    if name in ("tmpfs-pure", "sysv-pure"):
        pure_python(request.getfixturevalue("monkeypatch"))
        yield name.removesuffix("-pure")
        return
    if name != "redis":
        yield name
        return
    url = request.getfixturevalue("redis_url")
    before = set(redis_keys(url))
    yield name
    leaked = set(redis_keys(url)) - before
    if leaked:
        import redis  # noqa: PLC0415

        redis.Redis.from_url(url).delete(*leaked)
    assert not leaked, f"test leaked Redis keys: {sorted(leaked)}"


@pytest.fixture
def where(request: pytest.FixtureRequest, backend: str, root: str) -> str:
    """The ``root=`` for this test's backend: its directory, or the Redis server's URL."""
    if backend == "redis":
        return str(request.getfixturevalue("redis_url"))
    return root


@pytest.fixture
def attach(backend: str, where: str) -> Iterator[Callable[..., shmfs.Segment]]:
    """``shmfs.attach`` bound to this test's backend and root; destroys what it attached."""
    made: list[shmfs.Segment] = []

    def _attach(key: int, *args: Any, **kwargs: Any) -> shmfs.Segment:
        kwargs.setdefault("backend", backend)
        kwargs.setdefault("root", where)
        seg = shmfs.attach(key, *args, **kwargs)
        made.append(seg)
        return seg

    yield _attach
    for seg in made:
        seg.detach()
    for seg_key in {seg.key for seg in made}:
        with contextlib.suppress(shmfs.ShmfsError):
            shmfs.attach(seg_key, backend=backend, root=where).destroy()


@pytest.fixture
def seg(attach: Callable[..., shmfs.Segment], key: int) -> shmfs.Segment:
    """A fresh 1 MiB segment on this test's backend."""
    return attach(key, 1 << 20)


@pytest.fixture
def spawn_ctx() -> Any:
    """A spawn multiprocessing context: children start clean, as unrelated processes do."""
    return multiprocessing.get_context("spawn")


@pytest.fixture(params=["tmpfs", "tmpfs-pure"])
def tmpfs_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """For modules whose tests reach into tmpfs files (``backend = tmpfs_backend`` there):
    tmpfs with the C fast path and without it, as the ``backend`` fixture does."""
    if request.param == "tmpfs-pure":
        pure_python(monkeypatch)
    return "tmpfs"


def pure_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """Turn the C fast path off for handles opened from now on, here, in spawned children
    (the environment) and in children given a :func:`segment_ref` (forkserver's too)."""
    monkeypatch.setattr(hotpath, "_hot", None)
    monkeypatch.setenv("SHMFS_PURE_PYTHON", "1")


def segment_ref(seg: shmfs.Segment) -> dict[str, Any]:
    """What a child needs to attach the same segment, the way this process does."""
    return {
        "key": seg.key,
        "backend": seg.backend,
        "root": seg._spec["root"],
        "pure": not hotpath.available(),
    }


@pytest.fixture(params=["c", "pure"])
def sysv_paths(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """For the sysv-only modules (autouse there): each test with the C fast path and without
    it, as the ``backend`` fixture runs sysv both ways."""
    if request.param == "pure":
        pure_python(monkeypatch)
    return str(request.param)
