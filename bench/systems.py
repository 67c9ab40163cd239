"""The systems under test: one adapter class each, all behind the same interface.

An adapter stores Python values under integer indices. Its :class:`Ops` are the calls the bench
times (``get``, ``put``, and ``incr`` where the system has an atomic one), bound once so that no
extra Python frame of ours sits inside the timed bracket where the system's own call can be timed
directly. An adapter is made either by its owner (``create``: makes the store; ``close`` removes
it) or, in a child process, from its picklable :class:`Spec` (``open_child``: ``close`` only lets
go). Peers that cannot run here raise :class:`Unavailable` with the reason, which the report
prints instead of failing.
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing.shared_memory
import os
import pickle
import resource
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import shmfs
from bench.scratch import Scratch
from shmfs import hotpath

__all__ = [
    "FACTORIES",
    "Footprint",
    "Ops",
    "Spec",
    "System",
    "Unavailable",
    "bytes_on_disk",
    "open_child",
]

_PROTOCOL = 5  # what shmfs's own codec uses for plain values


class Unavailable(Exception):
    """A system that cannot run here; the message says why (and how to fix it)."""


@dataclass(frozen=True, slots=True)
class Ops:
    """The calls the bench times."""

    get: Callable[[int], Any]
    put: Callable[[int, Any], object]
    incr: Callable[[int], Any] | None  # None: the system has no atomic increment


@dataclass(frozen=True, slots=True)
class Spec:
    """What a child process needs to open the same store (picklable)."""

    cls: str
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Footprint:
    """What a store occupies: bytes by its own measure, and how many files (each file on tmpfs
    also costs the kernel an inode and a dentry, which no byte count includes)."""

    bytes: int
    files: int = 0


def _raise(error: OSError) -> None:
    raise error  # os.walk would skip an unreadable folder and undercount


def bytes_on_disk(*paths: str) -> Footprint:
    """Bytes allocated (``st_blocks``, not apparent size) to the files at and under ``paths``."""
    total = files = 0
    for path in paths:
        if os.path.isfile(path):
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(path).st_blocks * 512
                files += 1
            continue
        for folder, _dirs, names in os.walk(path, onerror=_raise):
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    total += os.lstat(os.path.join(folder, name)).st_blocks * 512
                    files += 1
    return Footprint(total, files)


class System:
    """A key-value store under test. Subclasses set ``ops`` in ``__init__``."""

    name: str = "?"
    #: Other processes can open it: it takes part in the multi-process cases.
    shared: ClassVar[bool] = False
    #: Its bytes live in shared memory (/dev/shm or System V), so the kernel's count of shared
    #: memory and slab measures what it costs.
    in_shm: ClassVar[bool] = False
    #: How many variables it can hold here; ``None``: as many as the fill curve asks for.
    max_variables: ClassVar[int | None] = None
    #: One line for the report: how it is set up.
    note: str = ""
    #: A variant of another system (another codec): measured in the point operations only, where
    #: the codec is what differs; the other cases would repeat its sibling's figures.
    variant: bool = False
    ops: Ops

    def __init__(self, params: dict[str, Any], *, owner: bool) -> None:
        self.params = params
        self.owner = owner
        self.closed = False

    @classmethod
    def create(cls, scratch: Scratch) -> Self:
        """Make a fresh, empty store owned by this process."""
        return cls({}, owner=True)

    def supports(self, value: Any) -> bool:
        """Whether this system can store ``value`` (the memcpy floor takes bytes only)."""
        del value
        return True

    def spec(self) -> Spec:
        """How a child process opens this store."""
        if not self.shared:
            raise TypeError(f"{self.name} lives in one process")
        return Spec(type(self).__name__, self.params)

    def fill(self, indices: range, value: Any) -> None:
        """Store ``value`` at every index in ``indices`` (setup: not timed)."""
        put = self.ops.put
        for index in indices:
            put(index, value)

    def reset_counter(self, index: int) -> None:
        """Set the counter ``incr`` increments to zero."""
        self.ops.put(index, 0)

    def counter(self, index: int) -> int:
        """The counter's value."""
        return int(self.ops.get(index))

    def footprint(self) -> Footprint | None:
        """What the store occupies now, by its own measure; ``None`` if unknown."""
        return None

    def close(self) -> None:
        """Owner: remove the store. Child: let go of it. Idempotent."""
        self.closed = True


def open_child(spec: Spec) -> System:
    """Open, in a child process, the store a :class:`Spec` names."""
    cls = _SHARED[spec.cls]
    return cls(spec.params, owner=False)


# ----------------------------------------------------------------------------------- floors


class PlainDict(System):
    name = "dict (floor)"
    note = "a dict in this process: no sharing, no encoding"

    def __init__(self, params: dict[str, Any], *, owner: bool) -> None:
        super().__init__(params, owner=owner)
        data: dict[int, Any] = {}

        def incr(index: int) -> int:
            data[index] = value = data.get(index, 0) + 1
            return int(value)

        self.ops = Ops(data.__getitem__, data.__setitem__, incr)


class PickleFloor(System):
    name = "pickle (floor)"
    note = "pickle.dumps/loads into a dict: the encoding every peer pays, and nothing else"

    def __init__(self, params: dict[str, Any], *, owner: bool) -> None:
        super().__init__(params, owner=owner)
        data: dict[int, bytes] = {}
        dumps, loads = pickle.dumps, pickle.loads

        def get(index: int) -> Any:
            return loads(data[index])

        def put(index: int, value: Any) -> None:
            data[index] = dumps(value, _PROTOCOL)

        self.ops = Ops(get, put, None)


class MemcpyFloor(System):
    """A copy into, and a copy out of (into a new ``bytes``), a mapped file on /dev/shm: the
    least a shared-memory store can do for a bytes value."""

    name = "memcpy (floor)"
    note = "copy into / out of (into a new bytes) a mapped /dev/shm file; bytes values only"
    _CAPACITY = 2 << 20

    @classmethod
    def create(cls, scratch: Scratch) -> Self:
        return cls({"path": scratch.shm_path("memcpy")}, owner=True)

    def __init__(self, params: dict[str, Any], *, owner: bool) -> None:
        super().__init__(params, owner=owner)
        fd = os.open(params["path"], os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, self._CAPACITY)  # faulted in once, as a store's file is
            self._mm = mmap.mmap(fd, self._CAPACITY)
        finally:
            os.close(fd)
        mm = self._mm
        length = [0]

        def get(index: int) -> bytes:
            return mm[0 : length[0]]

        def put(index: int, value: bytes) -> None:
            mm[0 : len(value)] = value
            length[0] = len(value)

        self.ops = Ops(get, put, None)

    def supports(self, value: Any) -> bool:
        return isinstance(value, bytes) and len(value) <= self._CAPACITY

    def close(self) -> None:
        if not self.closed:
            self._mm.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.params["path"])
        super().close()


# ------------------------------------------------------------------------------------ shmfs


class ShmfsSystem(System):
    """shmfs on one of its backends, through its public API only."""

    shared = True
    in_shm = True

    @classmethod
    def create_on(
        cls, scratch: Scratch, backend: str, codec: str | None = None, *, pure: bool = False
    ) -> ShmfsSystem:
        """Attach a new segment on ``backend``; ``Unavailable`` if that backend cannot run.
        ``pure``: without the C fast path (shmfs.hotpath), to show what it is worth."""
        from shmfs.backends import BACKENDS  # noqa: PLC0415  # only to ask what exists

        if backend not in BACKENDS:
            raise Unavailable(f"this shmfs has no {backend!r} backend")
        if pure and not hotpath.available():
            raise Unavailable("shmfs runs on its pure-Python path already (shmfs._hot not built)")
        params: dict[str, Any] = {"backend": backend, "codec": codec, "root": None, "pure": pure}
        server: RedisServer | None = None
        if backend == "tmpfs":
            params["root"] = scratch.shm_path("shmfs-tmpfs")
            os.mkdir(params["root"], 0o700)
            params["key"] = 0x5EB0_0001  # the root is ours alone, so any key is free in it
            params["size"] = 1 << 30
        elif backend == "sysv":
            params["key"] = scratch.sysv_key()
            params["size"] = 32 << 20  # room for a 1 MiB value or ~100k small ones
        elif backend == "redis":
            server = RedisServer.start(scratch)
            params["root"] = f"unix://{server.socket}"
            params["key"] = 0x5EB0_0002
            params["size"] = 1 << 30
        system: ShmfsSystem | None = None
        try:
            system = cls(params, owner=True)
            system.server = server
            system.ops.put(0, "probe")  # attaching is not enough: a backend must round-trip
            if system.ops.get(0) != "probe":
                raise Unavailable(f"{backend}: a value did not round-trip")
            system.seg.remove(0)
        except Exception as exc:
            if system is not None:
                system.close()
            elif server is not None:
                server.stop()
            if isinstance(exc, Unavailable):
                raise
            raise Unavailable(f"{backend} backend: {type(exc).__name__}: {exc}") from exc
        return system

    def __init__(self, params: dict[str, Any], *, owner: bool) -> None:
        super().__init__(params, owner=owner)
        codec = params["codec"]
        pure = bool(params.get("pure"))
        self.name = f"shmfs {params['backend']}" + (f", {codec} codec" if codec else "")
        self.name += ", pure Python" if pure else ""
        self.variant = codec is not None or pure
        self.note = {
            "tmpfs": "shmfs.attach(key, root=<a private dir in /dev/shm>)",
            "sysv": "shmfs.attach(key, backend='sysv'): PHP's layout, PHP's semaphore per call",
            "redis": "shmfs.attach(key, backend='redis') on a redis-server of ours (unix socket)",
        }[params["backend"]] + (f", codec='{codec}'" if codec else ", default codec")
        self.note += ", without the C fast path (shmfs.hotpath.pure_python)" if pure else ""
        self.server: RedisServer | None = None
        options: dict[str, Any] = {"backend": params["backend"], "root": params["root"]}
        if codec:
            options["codec"] = codec
        with hotpath.pure_python() if pure else contextlib.nullcontext():
            self.seg = shmfs.attach(params["key"], params["size"], **options)
        self.ops = Ops(self.seg.get, self.seg.put, self.seg.incr)

    def fill(self, indices: range, value: Any) -> None:
        # One lock for the whole fill: it is setup, and the lock is re-entrant for our puts.
        put = self.seg.put
        with self.seg.lock():
            for index in indices:
                put(index, value)

    def footprint(self) -> Footprint | None:
        backend = self.params["backend"]
        if backend == "tmpfs":
            return bytes_on_disk(self.params["root"])
        if backend == "redis":
            return Footprint(self.server.used_memory()) if self.server is not None else None
        return Footprint(int(self.seg.stats()["used"]))  # sysv: bytes of PHP's layout in use

    def close(self) -> None:
        if not self.closed:
            try:
                if self.owner:
                    with contextlib.suppress(shmfs.ShmfsError):
                        self.seg.destroy()
                else:
                    self.seg.detach()
            finally:
                if self.server is not None:
                    self.server.stop()
                if self.owner and self.params["backend"] == "tmpfs":
                    shutil.rmtree(self.params["root"], ignore_errors=True)
        super().close()


# ------------------------------------------------------------------------------------ peers


class SharedMemory(System):
    """``multiprocessing.shared_memory``: one block per index holding an 8-byte length and a
    pickle. No lock and no torn-read protection: a floor for sharing, not a peer for safety."""

    name = "multiprocessing.shared_memory"
    shared = True
    in_shm = True
    note = "one SharedMemory block per index, length + pickle, no lock (torn reads possible)"

    @classmethod
    def create(cls, scratch: Scratch) -> Self:
        return cls({"names": {}}, owner=True)

    def __init__(self, params: dict[str, Any], *, owner: bool) -> None:
        super().__init__(params, owner=owner)
        shm = multiprocessing.shared_memory.SharedMemory
        # A child attaches the blocks that exist; only the owner creates (it alone unlinks).
        self.blocks = {index: shm(name=name) for index, name in params["names"].items()}
        # The blocks' buffers by index (the same memoryview objects, not new exports).
        self.views = views = {i: _view(block) for i, block in self.blocks.items()}
        dumps, loads = pickle.dumps, pickle.loads

        def get(index: int) -> Any:
            buf = views[index]
            return loads(buf[8 : 8 + int.from_bytes(buf[:8], "little")])

        def put(index: int, value: Any) -> None:
            data = dumps(value, _PROTOCOL)
            buf = views.get(index)
            if buf is None or len(buf) < len(data) + 8:
                buf = self._grow(index, len(data) + 8)
            buf[8 : 8 + len(data)] = data
            buf[:8] = len(data).to_bytes(8, "little")

        self.ops = Ops(get, put, None)

    def _grow(self, index: int, size: int) -> memoryview:
        if not self.owner:
            raise RuntimeError("a child cannot create SharedMemory blocks the owner would leak")
        old = self.blocks.pop(index, None)
        self.views.pop(index, None)
        if old is not None:
            old.close()
            old.unlink()
        block = multiprocessing.shared_memory.SharedMemory(create=True, size=size)
        self.blocks[index] = block
        self.views[index] = view = _view(block)
        return view

    def spec(self) -> Spec:
        return Spec(type(self).__name__, {"names": {i: b.name for i, b in self.blocks.items()}})

    def footprint(self) -> Footprint | None:
        return bytes_on_disk(*(f"/dev/shm/{block.name}" for block in self.blocks.values()))

    def close(self) -> None:
        if not self.closed:
            for block in self.blocks.values():
                block.close()
                if self.owner:
                    with contextlib.suppress(FileNotFoundError):
                        block.unlink()
            self.blocks.clear()
            self.views.clear()
        super().close()


def _view(block: multiprocessing.shared_memory.SharedMemory) -> memoryview:
    buf = block.buf
    if buf is None:  # only after close(), which no caller has done yet
        raise RuntimeError(f"shared memory block {block.name} is closed")
    return buf


def _soft_nofile() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# Every SharedMemory block keeps two file descriptors open (its own, and the dup its mmap makes)
# and a mapping, so the fill curve stops it short of the descriptor limit, leaving room for the
# other systems, and of the kernel's map count (vm.max_map_count, 65530 by default).
SharedMemory.max_variables = max(100, min(20_000, (_soft_nofile() - 2000) // 2))


def _import_peer(module: str, install: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise Unavailable(f"not installed: {install}") from exc


class Lmdb(System):
    name = "lmdb"
    shared = True
    in_shm = True
    note = "lmdb on /dev/shm, one transaction per operation, sync=False, values pickled"
    # sync=False: shmfs does not make values durable either, so neither pays for fsync.
    sync: ClassVar[bool] = False

    @classmethod
    def create(cls, scratch: Scratch) -> Self:
        _import_peer("lmdb", "pip install lmdb")
        path = scratch.shm_path("lmdb")
        os.mkdir(path, 0o700)
        return cls({"dir": path}, owner=True)

    def __init__(self, params: dict[str, Any], *, owner: bool) -> None:
        super().__init__(params, owner=owner)
        lmdb = _import_peer("lmdb", "pip install lmdb")
        self.env = env = lmdb.open(params["dir"], map_size=4 << 30, sync=self.sync)
        dumps, loads = pickle.dumps, pickle.loads

        def key(index: int) -> bytes:
            return index.to_bytes(8, "big", signed=True)

        def get(index: int) -> Any:
            with env.begin() as txn:
                return loads(txn.get(index.to_bytes(8, "big", signed=True)))

        def put(index: int, value: Any) -> None:
            with env.begin(write=True) as txn:
                txn.put(index.to_bytes(8, "big", signed=True), dumps(value, _PROTOCOL))

        def incr(index: int) -> int:
            with env.begin(write=True) as txn:
                old = txn.get(key(index))
                new = (loads(old) if old is not None else 0) + 1
                txn.put(key(index), dumps(new, _PROTOCOL))
                return int(new)

        self._key = key
        self.ops = Ops(get, put, incr)

    def fill(self, indices: range, value: Any) -> None:
        data = pickle.dumps(value, _PROTOCOL)
        with self.env.begin(write=True) as txn:
            for index in indices:
                txn.put(self._key(index), data)

    def footprint(self) -> Footprint | None:
        return bytes_on_disk(self.params["dir"])

    def close(self) -> None:
        if not self.closed:
            self.env.close()
            if self.owner:
                shutil.rmtree(self.params["dir"], ignore_errors=True)
        super().close()


class LmdbDefaults(Lmdb):
    """lmdb as it comes (sync=True: each commit flushes), which is how the performance issue
    measured it; on tmpfs the flush is a system call, not a disk write."""

    name = "lmdb, defaults"
    note = "lmdb on /dev/shm, one transaction per operation, default settings (sync=True)"
    sync = True
    variant = True  # point operations only: the other cases would repeat lmdb's figures


def _checkpoint(path: str) -> None:
    """Fold SQLite's write-ahead log into the database and truncate it: the log's size depends
    on how many commits happened since the last checkpoint, not on how much is stored."""
    with contextlib.closing(sqlite3.connect(path, timeout=60)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


class DiskCache(System):
    name = "diskcache"
    shared = True
    in_shm = True
    note = "diskcache.Cache on /dev/shm, default settings (SQLite index, pickled values)"

    @classmethod
    def create(cls, scratch: Scratch) -> Self:
        _import_peer("diskcache", "pip install diskcache")
        return cls({"dir": scratch.shm_path("diskcache")}, owner=True)

    def __init__(self, params: dict[str, Any], *, owner: bool) -> None:
        super().__init__(params, owner=owner)
        diskcache = _import_peer("diskcache", "pip install diskcache")
        self.cache = cache = diskcache.Cache(params["dir"])
        self.ops = Ops(cache.get, cache.set, cache.incr)

    def fill(self, indices: range, value: Any) -> None:
        with self.cache.transact():
            for index in indices:
                self.cache.set(index, value)

    def reset_counter(self, index: int) -> None:
        self.cache.set(index, 0)

    def footprint(self) -> Footprint | None:
        _checkpoint(os.path.join(self.params["dir"], "cache.db"))
        return bytes_on_disk(self.params["dir"])

    def close(self) -> None:
        if not self.closed:
            self.cache.close()
            if self.owner:
                shutil.rmtree(self.params["dir"], ignore_errors=True)
        super().close()


class Sqlite(System):
    name = "sqlite3 (WAL)"
    shared = True
    in_shm = True
    note = "sqlite3 on /dev/shm, WAL, synchronous=NORMAL, autocommit, values pickled"

    @classmethod
    def create(cls, scratch: Scratch) -> Self:
        path = scratch.shm_path("sqlite")
        os.mkdir(path, 0o700)
        return cls({"dir": path}, owner=True)

    def __init__(self, params: dict[str, Any], *, owner: bool) -> None:
        super().__init__(params, owner=owner)
        # timeout: writers in other processes wait for the write lock instead of failing.
        db = sqlite3.connect(os.path.join(params["dir"], "db"), isolation_level=None, timeout=60)
        self.db = db
        if owner:
            db.execute("PRAGMA journal_mode=WAL")  # stored in the file: children inherit it
            db.execute("CREATE TABLE kv (k INTEGER PRIMARY KEY, v BLOB)")
            db.execute("CREATE TABLE counters (k INTEGER PRIMARY KEY, n INTEGER)")
        db.execute("PRAGMA synchronous=NORMAL")  # per connection
        dumps, loads = pickle.dumps, pickle.loads
        execute = db.execute

        def get(index: int) -> Any:
            return loads(execute("SELECT v FROM kv WHERE k = ?", (index,)).fetchone()[0])

        def put(index: int, value: Any) -> None:
            execute("REPLACE INTO kv VALUES (?, ?)", (index, dumps(value, _PROTOCOL)))

        def incr(index: int) -> int:
            # One statement is one transaction; fetchall() finishes it, releasing the write lock.
            rows = execute(
                "INSERT INTO counters VALUES (?, 1) ON CONFLICT(k) DO UPDATE SET n = n + 1 "
                "RETURNING n",
                (index,),
            ).fetchall()
            return int(rows[0][0])

        self.ops = Ops(get, put, incr)

    def fill(self, indices: range, value: Any) -> None:
        data = pickle.dumps(value, _PROTOCOL)
        with contextlib.closing(self.db.cursor()) as cursor:
            cursor.execute("BEGIN")
            cursor.executemany("REPLACE INTO kv VALUES (?, ?)", ((i, data) for i in indices))
            cursor.execute("COMMIT")

    def reset_counter(self, index: int) -> None:
        self.db.execute("REPLACE INTO counters VALUES (?, 0)", (index,))

    def counter(self, index: int) -> int:
        return int(self.db.execute("SELECT n FROM counters WHERE k = ?", (index,)).fetchone()[0])

    def footprint(self) -> Footprint | None:
        _checkpoint(os.path.join(self.params["dir"], "db"))
        return bytes_on_disk(self.params["dir"])

    def close(self) -> None:
        if not self.closed:
            self.db.close()
            if self.owner:
                shutil.rmtree(self.params["dir"], ignore_errors=True)
        super().close()


class RedisServer:
    """A redis-server of our own on a unix socket in the run's temp dir, no persistence."""

    def __init__(self, process: subprocess.Popen[bytes], socket: str) -> None:
        self.process = process
        self.socket = socket

    @classmethod
    def start(cls, scratch: Scratch) -> RedisServer:
        redis = _import_peer("redis", "pip install redis")
        binary = shutil.which("redis-server")
        if binary is None:
            raise Unavailable("redis-server not installed: apt-get install redis-server")
        folder = scratch.tmp_path("redis")
        os.mkdir(folder, 0o700)
        socket = os.path.join(folder, "redis.sock")
        process = subprocess.Popen(
            [
                *(binary, "--port", "0", "--unixsocket", socket, "--unixsocketperm", "700"),
                *("--save", "", "--appendonly", "no", "--dir", folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Out of our process group: a Ctrl-C must not stop it under a running case; our
            # cleanup stops it.
            start_new_session=True,
        )
        server = cls(process, socket)
        scratch.on_close("redis-server", server.stop)  # even if the caller never gets it
        client = redis.Redis(unix_socket_path=socket)
        deadline = time.monotonic() + 10
        try:
            while True:  # the server gives no other sign that it listens
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        server.stop()
                        raise Unavailable("redis-server did not start") from None
                    time.sleep(0.01)
        finally:
            client.close()
        return server

    def used_memory(self) -> int:
        redis = _import_peer("redis", "pip install redis")
        with contextlib.closing(redis.Redis(unix_socket_path=self.socket)) as client:
            return int(client.info("memory")["used_memory"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


class Redis(System):
    name = "redis-py (unix socket)"
    shared = True
    note = "redis-py GET/SET/INCR against a redis-server of ours on a unix socket, pickled values"

    @classmethod
    def create(cls, scratch: Scratch) -> Self:
        server = RedisServer.start(scratch)
        system = cls({"socket": server.socket}, owner=True)
        system.server = server
        return system

    def __init__(self, params: dict[str, Any], *, owner: bool) -> None:
        super().__init__(params, owner=owner)
        redis = _import_peer("redis", "pip install redis")
        self.server: RedisServer | None = None
        self.client = client = redis.Redis(unix_socket_path=params["socket"])
        dumps, loads = pickle.dumps, pickle.loads
        get_raw, set_raw = client.get, client.set

        def get(index: int) -> Any:
            return loads(get_raw(index))

        def put(index: int, value: Any) -> None:
            set_raw(index, dumps(value, _PROTOCOL))

        self.ops = Ops(get, put, client.incr)

    def fill(self, indices: range, value: Any) -> None:
        data = pickle.dumps(value, _PROTOCOL)
        with self.client.pipeline(transaction=False) as pipe:
            for index in indices:
                pipe.set(index, data)
            pipe.execute()

    def reset_counter(self, index: int) -> None:
        self.client.set(index, 0)

    def counter(self, index: int) -> int:
        return int(self.client.get(index))  # INCR keeps a plain integer, not a pickle

    def footprint(self) -> Footprint | None:
        return Footprint(self.server.used_memory()) if self.server else None

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self.client.close()
            if self.server is not None:
                self.server.stop()
        super().close()


_SHARED: dict[str, type[System]] = {
    cls.__name__: cls
    for cls in (ShmfsSystem, SharedMemory, Lmdb, LmdbDefaults, DiskCache, Sqlite, Redis)
}

#: Every system, in report order, as a factory that makes a fresh store or raises Unavailable.
FACTORIES: dict[str, Callable[[Scratch], System]] = {
    "shmfs tmpfs": lambda scratch: ShmfsSystem.create_on(scratch, "tmpfs"),
    "shmfs tmpfs, pure Python": lambda scratch: ShmfsSystem.create_on(scratch, "tmpfs", pure=True),
    "shmfs sysv": lambda scratch: ShmfsSystem.create_on(scratch, "sysv"),
    "shmfs sysv, php codec": lambda scratch: ShmfsSystem.create_on(scratch, "sysv", "php"),
    "shmfs redis": lambda scratch: ShmfsSystem.create_on(scratch, "redis"),
    "dict (floor)": PlainDict.create,
    "pickle (floor)": PickleFloor.create,
    "memcpy (floor)": MemcpyFloor.create,
    "multiprocessing.shared_memory": SharedMemory.create,
    "lmdb": Lmdb.create,
    "lmdb, defaults": LmdbDefaults.create,
    "diskcache": DiskCache.create,
    "sqlite3 (WAL)": Sqlite.create,
    "redis-py (unix socket)": Redis.create,
}
