"""The systems the benchmark compares, each behind the same small interface.

Every adapter stores Python values under integer indices (``put``/``get``) and cleans up what it
made in ``close``. Peers that are not installed raise ``Unavailable`` when opened, and the run
reports them as such instead of failing.
"""

from __future__ import annotations

import contextlib
import multiprocessing.shared_memory
import os
import pickle
import shutil
import sqlite3
import subprocess
import tempfile
import time
import uuid
from typing import Any

import shmfs


class Unavailable(Exception):
    """A peer that cannot run here (not installed, no server binary)."""


class System:
    """A key-value store under test."""

    name = "?"

    def put(self, index: int, value: Any) -> None:
        raise NotImplementedError

    def get(self, index: int) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        """Remove everything the system made."""


class PlainDict(System):
    """The floor: a dict in this process (no sharing, no encoding)."""

    name = "dict (floor)"

    def __init__(self) -> None:
        self.data: dict[int, Any] = {}

    def put(self, index: int, value: Any) -> None:
        self.data[index] = value

    def get(self, index: int) -> Any:
        return self.data[index]


class Pickled(System):
    """The cost of encoding alone: pickle into a dict."""

    name = "pickle (floor)"

    def __init__(self) -> None:
        self.data: dict[int, bytes] = {}

    def put(self, index: int, value: Any) -> None:
        self.data[index] = pickle.dumps(value, 5)

    def get(self, index: int) -> Any:
        return pickle.loads(self.data[index])


class Shmfs(System):
    """shmfs on one of its backends."""

    def __init__(self, backend: str, size: int = 512 << 20) -> None:
        self.name = f"shmfs {backend}"
        self.root = None
        if backend == "tmpfs":
            self.root = f"/dev/shm/shmfs-bench-{uuid.uuid4().hex}"
            os.mkdir(self.root, 0o700)
        self.seg = shmfs.attach(0x5EB00 + os.getpid() % 1000, size, backend=backend, root=self.root)

    def put(self, index: int, value: Any) -> None:
        self.seg.put(index, value)

    def get(self, index: int) -> Any:
        return self.seg.get(index)

    def close(self) -> None:
        self.seg.destroy()
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)


class SharedMemory(System):
    """``multiprocessing.shared_memory``: one block per index, length-prefixed pickle, no lock
    (so no crash safety and no protection against torn reads: a floor, not a peer)."""

    name = "multiprocessing.shared_memory"

    def __init__(self) -> None:
        self.blocks: dict[int, multiprocessing.shared_memory.SharedMemory] = {}

    def put(self, index: int, value: Any) -> None:
        data = pickle.dumps(value, 5)
        block = self.blocks.get(index)
        if block is None or block.size < len(data) + 8:
            if block is not None:
                block.close()
                block.unlink()
            block = multiprocessing.shared_memory.SharedMemory(create=True, size=len(data) + 8)
            self.blocks[index] = block
        block.buf[8 : 8 + len(data)] = data
        block.buf[:8] = len(data).to_bytes(8, "little")

    def get(self, index: int) -> Any:
        buf = self.blocks[index].buf
        return pickle.loads(buf[8 : 8 + int.from_bytes(buf[:8], "little")])

    def close(self) -> None:
        for block in self.blocks.values():
            block.close()
            block.unlink()


class DiskCache(System):
    """diskcache.Cache on /dev/shm (SQLite index, pickle)."""

    name = "diskcache"

    def __init__(self) -> None:
        try:
            import diskcache  # noqa: PLC0415  # an optional peer
        except ImportError as exc:
            raise Unavailable("pip install diskcache") from exc
        self.dir = tempfile.mkdtemp(dir="/dev/shm", prefix="bench-diskcache-")
        self.cache = diskcache.Cache(self.dir)

    def put(self, index: int, value: Any) -> None:
        self.cache.set(index, value)

    def get(self, index: int) -> Any:
        return self.cache.get(index)

    def close(self) -> None:
        self.cache.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Lmdb(System):
    """lmdb on /dev/shm, one transaction per operation, pickled values."""

    name = "lmdb"

    def __init__(self) -> None:
        try:
            import lmdb  # noqa: PLC0415  # an optional peer
        except ImportError as exc:
            raise Unavailable("pip install lmdb") from exc
        self.dir = tempfile.mkdtemp(dir="/dev/shm", prefix="bench-lmdb-")
        self.env = lmdb.open(self.dir, map_size=4 << 30, sync=False)

    def put(self, index: int, value: Any) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(index.to_bytes(8, "big", signed=True), pickle.dumps(value, 5))

    def get(self, index: int) -> Any:
        with self.env.begin() as txn:
            return pickle.loads(txn.get(index.to_bytes(8, "big", signed=True)))

    def close(self) -> None:
        self.env.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Sqlite(System):
    """sqlite3 in WAL mode on /dev/shm, autocommit, pickled values."""

    name = "sqlite3 (WAL)"

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(dir="/dev/shm", prefix="bench-sqlite-")
        self.db = sqlite3.connect(os.path.join(self.dir, "db"), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE kv (k INTEGER PRIMARY KEY, v BLOB)")

    def put(self, index: int, value: Any) -> None:
        self.db.execute("REPLACE INTO kv VALUES (?, ?)", (index, pickle.dumps(value, 5)))

    def get(self, index: int) -> Any:
        row = self.db.execute("SELECT v FROM kv WHERE k = ?", (index,)).fetchone()
        return pickle.loads(row[0])

    def close(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Redis(System):
    """redis-py against a redis-server this benchmark starts on a unix socket."""

    name = "redis (unix socket)"
    url = ""

    def __init__(self) -> None:
        server = shutil.which("redis-server")
        try:
            import redis  # noqa: PLC0415  # an optional peer
        except ImportError as exc:
            raise Unavailable("pip install redis") from exc
        if server is None:
            raise Unavailable("apt-get install redis-server")
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        socket = os.path.join(self.dir, "redis.sock")
        self.server = subprocess.Popen(
            [server, "--port", "0", "--unixsocket", socket, "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = redis.Redis(unix_socket_path=socket)
        self.url = f"unix://{socket}"
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    self.close()
                    raise Unavailable("redis-server did not start") from None
                time.sleep(0.01)

    def put(self, index: int, value: Any) -> None:
        self.client.set(index, pickle.dumps(value, 5))

    def get(self, index: int) -> Any:
        return pickle.loads(self.client.get(index))  # type: ignore[arg-type]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        self.server.terminate()
        self.server.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class ShmfsRedis(Redis):
    """shmfs's redis backend, on a server of its own started the same way."""

    name = "shmfs redis"

    def __init__(self) -> None:
        super().__init__()
        self.seg = shmfs.attach(0x5EB40, 512 << 20, backend="redis", root=self.url)

    def put(self, index: int, value: Any) -> None:
        self.seg.put(index, value)

    def get(self, index: int) -> Any:
        return self.seg.get(index)

    def close(self) -> None:
        with contextlib.suppress(shmfs.ShmfsError):
            self.seg.destroy()
        super().close()


FACTORIES = {
    "dict (floor)": PlainDict,
    "pickle (floor)": Pickled,
    "shmfs tmpfs": lambda: Shmfs("tmpfs"),
    "shmfs sysv": lambda: Shmfs("sysv", 16 << 20),
    "multiprocessing.shared_memory": SharedMemory,
    "lmdb": Lmdb,
    "diskcache": DiskCache,
    "sqlite3 (WAL)": Sqlite,
    "redis (unix socket)": Redis,
    "shmfs redis": ShmfsRedis,
}
