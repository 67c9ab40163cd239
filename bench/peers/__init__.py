"""The systems under test, one small adapter module each, and the registry the cases run.

``floors`` (a dict, pickle alone, memcpy alone), ``shmfs_segment`` (shmfs on each backend),
``shared_memory``, ``lmdb``, ``diskcache``, ``sqlite`` and ``redis``: each adapts one system to
:class:`bench.system.System`.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.peers.diskcache import DiskCache
from bench.peers.floors import MemcpyFloor, PickleFloor, PlainDict
from bench.peers.lmdb import Lmdb, LmdbDefaults
from bench.peers.redis import Redis
from bench.peers.shared_memory import SharedMemory
from bench.peers.shmfs_segment import ShmfsSystem
from bench.peers.sqlite import Sqlite
from bench.scratch import Scratch
from bench.system import Spec, System

__all__ = ["FACTORIES", "open_child"]

# The systems a child process can open from a Spec.
_SHARED: dict[str, type[System]] = {
    cls.__name__: cls
    for cls in (ShmfsSystem, SharedMemory, Lmdb, LmdbDefaults, DiskCache, Sqlite, Redis)
}


def open_child(spec: Spec) -> System:
    """Open, in a child process, the store a :class:`Spec` names."""
    cls = _SHARED[spec.cls]
    return cls(spec.params, owner=False)


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
