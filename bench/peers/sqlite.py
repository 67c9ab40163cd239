"""sqlite3 on /dev/shm in WAL mode: the standard library's shared store."""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import sqlite3
from typing import Any, Self

from bench.scratch import Scratch
from bench.system import PROTOCOL, Footprint, Ops, System, bytes_on_disk, checkpoint_sqlite

__all__ = ["Sqlite"]


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
            execute("REPLACE INTO kv VALUES (?, ?)", (index, dumps(value, PROTOCOL)))

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
        data = pickle.dumps(value, PROTOCOL)
        with contextlib.closing(self.db.cursor()) as cursor:
            cursor.execute("BEGIN")
            cursor.executemany("REPLACE INTO kv VALUES (?, ?)", ((i, data) for i in indices))
            cursor.execute("COMMIT")

    def reset_counter(self, index: int) -> None:
        self.db.execute("REPLACE INTO counters VALUES (?, 0)", (index,))

    def counter(self, index: int) -> int:
        return int(self.db.execute("SELECT n FROM counters WHERE k = ?", (index,)).fetchone()[0])

    def footprint(self) -> Footprint | None:
        checkpoint_sqlite(os.path.join(self.params["dir"], "db"))
        return bytes_on_disk(self.params["dir"])

    def close(self) -> None:
        if not self.closed:
            self.db.close()
            if self.owner:
                shutil.rmtree(self.params["dir"], ignore_errors=True)
        super().close()
