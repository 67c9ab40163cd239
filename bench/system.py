"""The interface every system under test implements, and the helpers its adapters share.

An adapter (one module each in :mod:`bench.peers`) stores Python values under integer indices.
Its :class:`Ops` are the calls the bench times (``get``, ``put``, and ``incr`` where the system
has an atomic one), bound once so that no extra Python frame of ours sits inside the timed
bracket where the system's own call can be timed directly. An adapter is made either by its owner
(``create``: makes the store; ``close`` removes it) or, in a child process, from its picklable
:class:`Spec` (``bench.peers.open_child``: ``close`` only lets go). Peers that cannot run here
raise :class:`Unavailable` with the reason, which the report prints instead of failing.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from bench.scratch import Scratch

__all__ = [
    "PROTOCOL",
    "Footprint",
    "Ops",
    "Spec",
    "System",
    "Unavailable",
    "bytes_on_disk",
    "checkpoint_sqlite",
    "import_peer",
]

PROTOCOL = 5  # what shmfs's own codec uses for plain values


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


def import_peer(module: str, install: str) -> Any:
    """Import a peer's package, or raise :class:`Unavailable` saying how to install it."""
    try:
        return __import__(module)
    except ImportError as exc:
        raise Unavailable(f"not installed: {install}") from exc


def checkpoint_sqlite(path: str) -> None:
    """Fold SQLite's write-ahead log into the database and truncate it: the log's size depends
    on how many commits happened since the last checkpoint, not on how much is stored."""
    with contextlib.closing(sqlite3.connect(path, timeout=60)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
