"""Redis topologies: a master found by its Sentinels (and found again after a failover, forced
or after the master was killed), and a Redis Cluster (a segment's hash slot moved to another
node while handles use it). Each test starts its own servers: no other backend has these."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import shmfs
from bench.redis_server import RedisServer
from tests.redis_workers import incr_until

redis = pytest.importorskip("redis")

WAIT = 60
SERVICE = "shmfs-test"
#: Seconds a handle may take to follow a new master or a moved slot: the Sentinels are asked
#: again every second, and a demoted master keeps serving for 8-10 s, so a handle that only
#: followed when the old master cut it off would take longer.
FOLLOW = 5.0
#: Seconds a watch waits for a change.
WATCH = 1.5


@pytest.fixture(autouse=True)
def _no_leaked_keys(redis_leak_guard: None) -> None:
    """Every test here: ``redis_leak_guard`` (tests/conftest.py)."""


def _free_ports(count: int) -> list[int]:
    """Distinct free ports whose cluster bus ports (10000 above) are free too."""
    found: list[int] = []
    rng = random.Random()
    while len(found) < count:
        port = rng.randrange(20000, 50000)
        if port in found:
            continue
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        found.append(port)
    return found


def _client(port: int) -> Any:
    return contextlib.closing(redis.Redis(host="127.0.0.1", port=port))


# ------------------------------------------------------------------------------------- Sentinel


class Sentinels:
    """A master, its replica and one Sentinel (quorum 1) watching them, all our own."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.master_port, self.replica_port, self.sentinel_port = _free_ports(3)
        self.url = f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{SERVICE}/0"
        self.servers: list[RedisServer] = []
        self.sentinel: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        for name, port in (("master", self.master_port), ("replica", self.replica_port)):
            os.mkdir(os.path.join(self.directory, name))
            self.servers.append(RedisServer.start(os.path.join(self.directory, name), port=port))
        with _client(self.master_port) as master:
            master.config_set("repl-diskless-sync-delay", 0)  # no 5 s wait for more replicas
        with _client(self.replica_port) as replica:
            replica.replicaof("127.0.0.1", self.master_port)
            self.until(lambda: replica.info("replication")["master_link_status"] == "up")
        # The replica first, so the Sentinel's first look at the master lists it.
        config = os.path.join(self.directory, "sentinel.conf")
        with open(config, "w", encoding="ascii") as conf:
            conf.write(
                f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.master_port} 1\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
            )
        self.sentinel = subprocess.Popen(
            ["redis-server", config, "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

        def ready() -> bool:
            with _client(self.sentinel_port) as sentinel:
                replicas = sentinel.sentinel_slaves(SERVICE)
            return bool(replicas) and all(
                not r["is_sdown"] and not r["is_disconnected"] and r["master-link-status"] == "ok"
                for r in replicas
            )

        self.until(ready)

    def until(self, done: Any, timeout: float = WAIT) -> float:
        """Poll ``done()`` until true; the seconds it took."""
        began = time.monotonic()
        while True:
            with contextlib.suppress(redis.ConnectionError, redis.ResponseError):
                if done():
                    return time.monotonic() - began
            assert self.sentinel is None or self.sentinel.poll() is None, "the Sentinel exited"
            assert time.monotonic() - began < timeout, f"not within {timeout} s: {done}"
            time.sleep(0.01)

    def master(self) -> int:
        """The port of the master the Sentinel names to clients once a failover has ended
        (``SENTINEL MASTERS``, which redis-py asks; ``get-master-addr-by-name`` names the
        promoted replica earlier)."""
        with _client(self.sentinel_port) as sentinel:
            return int(sentinel.sentinel_master(SERVICE)["port"])

    def replicated(self) -> None:
        """Wait until the replica has every write the master has (``WAIT``)."""
        with _client(self.master_port) as master:
            assert master.wait(1, 10_000) == 1

    def subscribers(self, key: int) -> int:
        """How many subscribe to segment ``key``'s changes on the master the Sentinel names."""
        with _client(self.master()) as master:
            return int(master.pubsub_numsub(f"shmfs:{{{key}}}:changes")[0][1])

    def failover(self) -> None:
        """Force a failover to the replica; return once the Sentinel names it."""
        with _client(self.sentinel_port) as sentinel:
            sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE)
        self.until(lambda: self.master() == self.replica_port, timeout=30)

    def stop(self) -> None:
        if self.sentinel is not None:
            self.sentinel.terminate()
            self.sentinel.wait(WAIT)
        for server in self.servers:
            server.stop()


@pytest.fixture
def sentinels() -> Iterator[Sentinels]:
    """A master, a replica and a Sentinel of this test's own (``Sentinels``)."""
    made = Sentinels(tempfile.mkdtemp(prefix="shmfs-redis-sentinel-"))
    try:
        made.start()
        yield made
    finally:
        made.stop()
        shutil.rmtree(made.directory, ignore_errors=True)


def test_a_sentinel_url_finds_the_master(sentinels: Sentinels, key: int) -> None:
    url = sentinels.url
    seg = shmfs.attach(key, 4096, backend="redis", root=url, codec="json")
    try:
        seg[1] = {"via": "sentinel"}
        assert seg[1] == {"via": "sentinel"}
        assert seg.incr(2) == 1
        with seg.lock(timeout=5):
            seg[3] = "locked"
        assert seg.stats()["location"].startswith("redis+sentinel://")
        assert [info["key"] for info in shmfs.segments(backend="redis", root=url)] == [key]
        with shmfs.attach(key, backend="redis", root=url) as pickling:
            pickling[4] = {"pickled": True}
            with pytest.raises(shmfs.UnsafeSegment):
                pickling.get(4)  # found over TCP: not private
        with pytest.raises(shmfs.BackendUnavailable):
            shmfs.attach(key, backend="redis", root=url.replace(SERVICE, "nope"))
        with pytest.raises(shmfs.InvalidArgument):
            shmfs.attach(key, backend="redis", root="redis+sentinel://127.0.0.1:1")
    finally:
        seg.destroy()


def _next_after_resubscribing(watch: Any, sentinels: Sentinels, key: int, write: Any) -> Any:
    """``next(watch)`` once it has subscribed again on the new master: a first ``next`` sees
    no change and waits on its subscription, which it then makes again there; the second
    returns what another thread's ``write()`` stores."""
    with pytest.raises(shmfs.WaitTimeout):
        next(watch)
    assert sentinels.subscribers(key) == 1
    writer = threading.Thread(target=write)
    writer.start()
    try:
        return next(watch)
    finally:
        writer.join(WAIT)


async def _async_watch_follows(
    awatch: Any, sentinels: Sentinels, key: int, fresh: shmfs.Segment
) -> None:
    """An asyncio watch made on the old master subscribes again on the new one, too."""
    assert await awatch.__anext__() == "news"  # stored already: no wait
    with pytest.raises(shmfs.WaitTimeout):
        await awatch.__anext__()
    assert sentinels.subscribers(key) == 1
    writer = threading.Thread(target=lambda: fresh.put(3, "more news"))
    writer.start()
    try:
        assert await awatch.__anext__() == "more news"
    finally:
        writer.join(WAIT)
        await awatch.aclose()


def test_an_attached_handle_follows_a_forced_failover(sentinels: Sentinels, key: int) -> None:
    """After ``SENTINEL FAILOVER`` the old master keeps serving for seconds: the handle, its
    held connection, its lock and its watch move to the new master within ``FOLLOW`` s, and
    no write acknowledged after that is lost."""
    seg = shmfs.attach(key, 4096, backend="redis", root=sentinels.url, codec="json")
    fresh = None
    try:
        seg[1] = "before"
        seg[2] = 10
        watch = seg.watch(3, timeout=WATCH)
        awatch = seg.watch_async(3, timeout=WATCH)
        with seg.lock(timeout=5):  # held through the failover: its lease was replicated
            seg[4] = "locked"
            sentinels.replicated()
            sentinels.failover()
            switched = time.monotonic()
            fresh = shmfs.attach(key, backend="redis", root=sentinels.url, codec="json")
            while True:  # until an increment lands on the new master, which fresh reads
                counted = seg.incr(2)
                if fresh[2] == counted:
                    break
                assert time.monotonic() - switched < FOLLOW, "still on the old master"
            with _client(sentinels.master_port) as old:
                assert old.role()[0] == b"master"  # still: the handle left it on its own
            for _ in range(20):
                counted = seg.incr(2)
            seg[4] = "still locked"
        assert fresh[2] == counted and fresh[4] == "still locked"
        assert seg[1] == fresh[1] == "before"
        assert _next_after_resubscribing(watch, sentinels, key, lambda: fresh.put(3, "news")) == (
            "news"
        )
        watch.close()
        asyncio.run(_async_watch_follows(awatch, sentinels, key, fresh))
        seg.remove(1)
        assert 1 not in fresh
        with seg.lock(timeout=5):
            seg[5] = "a new lock"
        assert fresh[5] == "a new lock"
    finally:
        if fresh is not None:
            fresh.detach()
        seg.destroy()


def _own_sockets() -> set[str]:
    """The inodes of this process's sockets."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("socket:["):
                found.add(link[len("socket:[") : -1])
    return found


def _sent_to(port: int) -> bool:
    """Whether bytes from this process wait unread at the server on ``port``: in the receive
    queue of its end of one of our connections (/proc/net/tcp; not the Sentinel's or the
    replica's connections to it)."""
    with open("/proc/net/tcp", encoding="ascii") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    inodes = _own_sockets()
    ours = {int(row[1].split(":")[1], 16) for row in rows if row[9] in inodes}
    return any(
        int(row[1].split(":")[1], 16) == port
        and int(row[2].split(":")[1], 16) in ours
        and int(row[4].split(":")[1], 16) > 0
        for row in rows
    )


def test_a_killed_master_is_replaced_and_a_lost_change_is_reported_unknown(
    sentinels: Sentinels, key: int
) -> None:
    """An incr sent to a stopped master that is then killed: the call says its outcome is
    unknown (and it was not resent); once the Sentinel promotes the replica, the same handle
    works again, each failure meanwhile saying nothing was changed."""
    seg = shmfs.attach(key, 4096, backend="redis", root=sentinels.url, codec="json")
    try:
        seg[1] = 5
        watch = seg.watch(2, timeout=WATCH)
        sentinels.replicated()
        master = sentinels.servers[0].process
        os.kill(master.pid, signal.SIGSTOP)
        outcome: list[BaseException] = []

        def incr() -> None:
            try:
                seg.incr(1)
            except shmfs.BackendUnavailable as exc:
                outcome.append(exc)

        caller = threading.Thread(target=incr)
        caller.start()
        try:
            sentinels.until(lambda: _sent_to(sentinels.master_port))
        finally:
            master.kill()  # SIGKILL ends a stopped process too
            master.wait(WAIT)
            caller.join(WAIT)
        assert [getattr(exc, "committed", "?") for exc in outcome] == [None]
        killed = time.monotonic()
        while True:
            try:
                assert seg.incr(1) == 6  # the lost incr was not resent
                break
            except shmfs.BackendUnavailable as exc:
                assert exc.committed is False, exc
                assert time.monotonic() - killed < 30, "no new master"
                time.sleep(0.01)
        assert sentinels.master() == sentinels.replica_port
        with shmfs.attach(key, backend="redis", root=sentinels.url, codec="json") as fresh:
            assert fresh[1] == 6
            assert _next_after_resubscribing(watch, sentinels, key, lambda: fresh.put(2, 1)) == 1
        with seg.lock(timeout=5):
            seg[3] = "locked"
    finally:
        seg.destroy()


def test_a_write_refused_by_a_demoted_master_goes_to_the_new_one(
    sentinels: Sentinels, key: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change that reaches the old master after it became a replica is refused unrun
    (``READONLY``): it is sent to the new master, not reported as maybe made."""
    from shmfs.backends.redis import sentinel  # noqa: PLC0415  # its recheck period

    # Only the READONLY reply can tell this handle that the master moved.
    monkeypatch.setattr(sentinel, "MASTER_RECHECK", 3600.0)
    seg = shmfs.attach(key, 4096, backend="redis", root=sentinels.url, codec="json")
    try:
        seg[1] = 1
        sentinels.replicated()
        sentinels.failover()
        assert seg.incr(1) == 2  # still the old master's: it was never told
        with _client(sentinels.master_port) as old:
            old.replicaof("127.0.0.1", sentinels.replica_port)  # as a Sentinel would, later
            assert old.role()[0] == b"slave"
        assert seg.incr(1) == 2  # on the new master, which never had the old one's 2
        seg.put(2, "there")
        with shmfs.attach(key, backend="redis", root=sentinels.url, codec="json") as fresh:
            assert fresh[1] == 2 and fresh[2] == "there"
    finally:
        seg.destroy()


# -------------------------------------------------------------------------------------- Cluster


@pytest.fixture
def cluster() -> Iterator[list[int]]:
    """A Redis Cluster of three masters of our own: their loopback ports."""
    if shutil.which("redis-cli") is None:
        pytest.skip("needs redis-cli to form a cluster")
    directory = tempfile.mkdtemp(prefix="shmfs-redis-cluster-")
    ports = _free_ports(3)
    nodes = []
    try:
        for port in ports:
            node_dir = os.path.join(directory, str(port))
            os.mkdir(node_dir)
            nodes.append(
                subprocess.Popen(
                    [
                        *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
                        *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                        *("--save", "", "--appendonly", "no", "--dir", node_dir),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        for port in ports:
            deadline = time.monotonic() + WAIT
            while True:
                try:
                    with contextlib.closing(redis.Redis(host="127.0.0.1", port=port)) as probe:
                        probe.ping()
                    break
                except redis.ConnectionError:
                    assert all(node.poll() is None for node in nodes), "a cluster node exited"
                    assert time.monotonic() < deadline, "a cluster node did not start"
                    time.sleep(0.01)
        subprocess.run(
            [
                *("redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports)),
                *("--cluster-replicas", "0", "--cluster-yes"),
            ],
            check=True,
            capture_output=True,
            timeout=WAIT,
        )
        deadline = time.monotonic() + WAIT
        while True:  # every node agrees the cluster is whole
            states = []
            for port in ports:
                with contextlib.closing(redis.Redis(host="127.0.0.1", port=port)) as probe:
                    info = probe.execute_command("CLUSTER", "INFO")
                    text = info.decode() if isinstance(info, bytes) else str(info)
                    states.append("ok" if "cluster_state:ok" in text else text)
            if states == ["ok"] * 3:
                break
            assert time.monotonic() < deadline, f"cluster not ok: {states}"
            time.sleep(0.05)
        yield ports
    finally:
        for node in nodes:
            node.terminate()
            node.wait(WAIT)
        shutil.rmtree(directory, ignore_errors=True)


def _url(ports: list[int]) -> str:
    return f"redis+cluster://127.0.0.1:{ports[0]}"


def test_a_cluster_keeps_each_segment_on_one_node(cluster: list[int]) -> None:
    cluster_url = _url(cluster)
    keys = [4242, 98765, 1234567, 77]  # their tags hash to slots on different nodes
    segs = [shmfs.attach(k, 4096, backend="redis", root=cluster_url, codec="json") for k in keys]
    try:
        for number, seg in enumerate(segs):
            seg[1] = {"segment": number}
            assert seg.incr(2) == 1 and seg.cas(2, 1, 7) and seg.add(3, "x")
            with seg.lock(timeout=5):
                seg[4] = "locked"
            seg.remove(3)
        for number, seg in enumerate(segs):
            assert seg[1] == {"segment": number} and seg[2] == 7 and 3 not in seg
            assert seg.stats()["variables"] == 3
        listed = {info["key"] for info in shmfs.segments(backend="redis", root=cluster_url)}
        assert listed == set(keys)
        port = cluster_url.rsplit(":", 1)[1]
        with contextlib.closing(
            redis.cluster.RedisCluster(host="127.0.0.1", port=int(port))
        ) as direct:
            slots = {
                direct.keyslot(f"shmfs:{{{k}}}:{part}")
                for k in keys[:1]
                for part in ("meta", "vars", "gen", "lock")
            }
            assert len(slots) == 1
            owners = {direct.get_node_from_key(f"shmfs:{{{k}}}:meta").name for k in keys}
            assert len(owners) > 1  # the segments are spread over the nodes
    finally:
        for seg in segs:
            seg.destroy()


def _owner(ports: list[int], key: int) -> int:
    """The port of the node that serves segment ``key``'s hash slot, as the nodes say now."""
    with contextlib.closing(redis.cluster.RedisCluster(host="127.0.0.1", port=ports[0])) as direct:
        return int(direct.get_node_from_key(f"shmfs:{{{key}}}:meta").port)


class SlotMove:
    """Moving segment ``key``'s hash slot to another node step by step, as ``redis-cli
    --cluster reshard`` does (``CLUSTER SETSLOT``, then ``MIGRATE`` key by key)."""

    def __init__(self, stack: contextlib.ExitStack, ports: list[int], key: int) -> None:
        self.key = key
        self.nodes = {port: stack.enter_context(_client(port)) for port in ports}
        self.ids = {
            port: node.execute_command("CLUSTER", "MYID") for port, node in self.nodes.items()
        }
        self.source = _owner(ports, key)
        self.target = next(port for port in ports if port != self.source)
        self.slot = self.nodes[self.source].execute_command("CLUSTER", "KEYSLOT", f"{{{key}}}")

    def begin(self) -> None:
        self.nodes[self.target].execute_command(
            "CLUSTER", "SETSLOT", self.slot, "IMPORTING", self.ids[self.source]
        )
        self.nodes[self.source].execute_command(
            "CLUSTER", "SETSLOT", self.slot, "MIGRATING", self.ids[self.target]
        )

    def migrate(self, name: str) -> None:
        """Move the segment's key ``name`` (``meta``, ``vars``, ``gen``)."""
        self.nodes[self.source].execute_command(
            *("MIGRATE", "127.0.0.1", self.target, "", 0, 5000, "KEYS"),
            f"shmfs:{{{self.key}}}:{name}",
        )

    def end(self) -> None:
        """The slot is the target's: told to every node, the target first."""
        for port in sorted(self.nodes, key=lambda port: (port != self.target, port != self.source)):
            self.nodes[port].execute_command(
                "CLUSTER", "SETSLOT", self.slot, "NODE", self.ids[self.target]
            )


class _Incrementer:
    """Another process incrementing index 2 of segment ``key`` at ``url`` until told to stop
    (tests.redis_workers.incr_until), whose count says how many increments it made."""

    def __init__(self, url: str, key: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.started, self.stop, self.results = context.Event(), context.Event(), context.Queue()
        args = (url, key, 2, self.started, self.stop, self.results)
        self.process = context.Process(target=incr_until, args=args)

    def start(self) -> None:
        self.process.start()
        assert self.started.wait(WAIT)

    def made_after_ten_more(self, seg: shmfs.Segment) -> int:
        """Let it increment ten more times (wherever the segment now is), stop it, and return
        how many increments it made."""
        moved = seg[2]
        while seg[2] < moved + 10:
            assert self.process.is_alive(), self.results.get(timeout=WAIT)
        self.stop.set()
        made = self.results.get(timeout=WAIT)
        assert isinstance(made, int), made
        return made

    def close(self) -> None:
        self.stop.set()
        if self.process.pid is not None:
            self.process.join(WAIT)


def test_a_segment_keeps_working_while_its_slot_moves(cluster: list[int], key: int) -> None:
    """The slot of an attached segment's keys moves to another node, key by key, while this
    handle and another process write: reads are served throughout (following ``ASK`` once a
    key has moved), changes wait out the move (``TRYAGAIN``) and then follow ``MOVED``; no
    increment is lost or made twice."""
    url = _url(cluster)
    seg = shmfs.attach(key, 4096, backend="redis", root=url, codec="json")
    worker = _Incrementer(url, key)
    try:
        seg[1] = "kept"
        seg[2] = 0
        with contextlib.ExitStack() as stack:
            move = SlotMove(stack, cluster, key)
            worker.start()
            move.begin()
            # The worker's changes wait out the move from now on (TRYAGAIN): a script's keys
            # include the lock's, absent, so they are never all on one node until it ends.
            for name in ("meta", "vars", "gen"):  # one at a time: the keys split between nodes
                assert seg[1] == "kept"  # from the source, then (ASK) from the target
                move.migrate(name)
            assert seg[1] == "kept"  # every key on the target: the source answers ASK
            changer = threading.Thread(target=lambda: seg.incr(2))  # waits for the end too
            changer.start()
            move.end()
            changer.join(WAIT)
            made = worker.made_after_ten_more(seg)  # the worker, too, writes on the new node
        assert seg[2] == made + 1  # every increment counted once
        assert _owner(cluster, key) == move.target
        assert seg[1] == "kept"
        with seg.lock(timeout=5):
            seg[3] = "locked"
        seg.remove(3)
        assert seg.stats()["variables"] == 2
    finally:
        worker.close()
        seg.destroy()


def test_a_batch_read_follows_its_segment_while_its_slot_moves(
    cluster: list[int], key: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch read's reply read off the socket (shmfs/backends/redis/reply.py) hands ``ASK``
    and ``MOVED`` to the same handling as any reply: mid-move, from the target after
    ``ASKING``; after it, from the new owner once the layout is learnt again."""
    from shmfs.backends.redis import call, reply  # noqa: PLC0415  # this test alone

    refused: list[str] = []
    raw_reads: list[int] = []
    real_refused, real_raw = call._refused, reply._raw

    def counted_refused(client: Any, exc: Exception, *args: Any) -> Any:
        refused.append(type(exc).__name__)
        return real_refused(client, exc, *args)

    def counted_raw(*args: Any) -> Any:
        raw_reads.append(1)
        return real_raw(*args)

    monkeypatch.setattr(call, "_refused", counted_refused)
    monkeypatch.setattr(reply, "_raw", counted_raw)
    seg = shmfs.attach(key, 4096, backend="redis", root=_url(cluster), codec="json")
    try:
        stored = {index: f"value {index}" for index in range(50)}
        seg.put_many(stored)
        assert seg.get_many(list(range(50))) == stored and raw_reads
        with contextlib.ExitStack() as stack:
            move = SlotMove(stack, cluster, key)
            move.begin()
            move.migrate("vars")
            assert seg.get_many(list(range(50))) == stored
            assert refused == ["AskError"]
            move.migrate("meta")
            move.migrate("gen")
            move.end()
        refused.clear()
        assert seg.get_many(list(range(60))) == stored  # absent ones: the segment checked too
        assert refused == ["MovedError"]
    finally:
        seg.destroy()


def test_a_plain_url_of_a_node_says_when_the_segment_moved_away(
    cluster: list[int], key: int
) -> None:
    source = _owner(cluster, key)
    seg = shmfs.attach(key, 4096, backend="redis", root=f"redis://127.0.0.1:{source}")
    try:
        seg[1] = "here"
        with contextlib.ExitStack() as stack:
            move = SlotMove(stack, cluster, key)
            move.begin()
            for name in ("meta", "vars", "gen"):
                move.migrate(name)
            move.end()
        for call in (
            lambda: seg.put(1, "there"),
            lambda: seg.get(1),
            lambda: seg.get_many([1, 2]),
            seg.lock().__enter__,
        ):
            with pytest.raises(shmfs.ShmfsError, match=r"does not serve .* redis\+cluster://"):
                call()
        with pytest.raises(shmfs.ShmfsError, match=r"does not serve .* redis\+cluster://"):
            shmfs.attach(key, backend="redis", root=f"redis://127.0.0.1:{source}")
    finally:
        seg.detach()
        with shmfs.attach(key, backend="redis", root=_url(cluster)) as whole:
            whole.destroy()


def test_a_master_short_of_replicas_refuses_writes_as_unavailable(key: int) -> None:
    """``min-replicas-to-write``, the server's bound on what a failover can lose: a write the
    master refuses for it says nothing was written, and reads go on."""
    directory = tempfile.mkdtemp(prefix="shmfs-redis-replicas-")
    try:
        server = RedisServer.start(directory)
        try:
            seg = shmfs.attach(key, 4096, backend="redis", root=server.url, codec="json")
            seg[1] = "kept"
            with contextlib.closing(redis.Redis(unix_socket_path=server.socket)) as direct:
                direct.config_set("min-replicas-to-write", 1)
                for call in (lambda: seg.put(1, "lost"), lambda: seg.incr(2), seg.clear):
                    with pytest.raises(shmfs.BackendUnavailable, match="min-replicas") as info:
                        call()
                    assert info.value.committed is False
                assert seg[1] == "kept"
                direct.config_set("min-replicas-to-write", 0)
            seg.destroy()
        finally:
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_redis_cli_reshards_under_writes_without_losing_or_doubling_one(
    cluster: list[int],
) -> None:
    """``redis-cli --cluster reshard`` moves the slot of a segment (the source node's first
    slots: the ones it moves) while another process increments: every increment counted once."""
    with _client(cluster[0]) as probe:
        ranges = probe.execute_command("CLUSTER", "SLOTS")
    first = next(r for r in ranges if int(r[0]) == 0)  # [start, end, [host, port, id], ...]
    source_id, target_id = first[2][2], next(r for r in ranges if r is not first)[2][2]
    key = next(k for k in range(10_000, 100_000) if redis.crc.key_slot(f"{{{k}}}".encode()) < 8)
    url = _url(cluster)
    seg = shmfs.attach(key, 4096, backend="redis", root=url, codec="json")
    worker = _Incrementer(url, key)
    try:
        seg[1] = "kept"
        seg[2] = 0
        worker.start()
        subprocess.run(
            [
                *("redis-cli", "--cluster", "reshard", f"127.0.0.1:{cluster[0]}"),
                *("--cluster-from", source_id, "--cluster-to", target_id),
                *("--cluster-slots", "8", "--cluster-yes"),
            ],
            check=True,
            capture_output=True,
            timeout=WAIT,
        )
        target = int(next(r for r in ranges if r[2][2] == target_id)[2][1])
        assert _owner(cluster, key) == target
        made = worker.made_after_ten_more(seg)  # the worker goes on, on the new node
        assert seg[2] == made and seg[1] == "kept"
    finally:
        worker.close()
        seg.destroy()


def test_a_lease_the_new_master_never_got_fences_its_holder(sentinels: Sentinels, key: int) -> None:
    """A lock taken just before a failover may not have reached the replica: on the new
    master another process can take it, and the old holder's writes are refused."""
    seg = shmfs.attach(key, 4096, backend="redis", root=sentinels.url, codec="json")
    try:
        with seg.lock(timeout=5):
            seg[1] = "under the lock"
            sentinels.replicated()
            sentinels.failover()
            with _client(sentinels.replica_port) as new:
                assert new.delete(f"shmfs:{{{key}}}:lock") == 1  # as if never replicated
            with shmfs.attach(key, backend="redis", root=sentinels.url, codec="json") as other:
                with other.lock(timeout=5):
                    other[1] = "the new holder's"
                switched = time.monotonic()
                while seg[1] != "the new holder's":  # this handle has left the old master
                    assert time.monotonic() - switched < FOLLOW, "still on the old master"
                with pytest.raises(shmfs.LockTimeout):
                    seg[1] = "the old holder's, late"
                assert other[1] == "the new holder's"
    finally:
        seg.destroy()
