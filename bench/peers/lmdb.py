"""lmdb on /dev/shm: the C store whose one call per get is the bar shmfs measures itself by."""

from __future__ import annotations

import os
import pickle
import shutil
from typing import Any, ClassVar, Self

from bench.scratch import Scratch
from bench.system import PROTOCOL, Footprint, Ops, System, bytes_on_disk, import_peer

__all__ = ["Lmdb", "LmdbDefaults"]


class Lmdb(System):
    name = "lmdb"
    shared = True
    in_shm = True
    note = "lmdb on /dev/shm, one transaction per operation, sync=False, values pickled"
    # sync=False: shmfs does not make values durable either, so neither pays for fsync.
    sync: ClassVar[bool] = False

    @classmethod
    def create(cls, scratch: Scratch) -> Self:
        import_peer("lmdb", "pip install lmdb")
        path = scratch.shm_path("lmdb")
        os.mkdir(path, 0o700)
        return cls({"dir": path}, owner=True)

    def __init__(self, params: dict[str, Any], *, owner: bool) -> None:
        super().__init__(params, owner=owner)
        lmdb = import_peer("lmdb", "pip install lmdb")
        self.env = env = lmdb.open(params["dir"], map_size=4 << 30, sync=self.sync)
        dumps, loads = pickle.dumps, pickle.loads

        def key(index: int) -> bytes:
            return index.to_bytes(8, "big", signed=True)

        def get(index: int) -> Any:
            with env.begin() as txn:
                return loads(txn.get(index.to_bytes(8, "big", signed=True)))

        def put(index: int, value: Any) -> None:
            with env.begin(write=True) as txn:
                txn.put(index.to_bytes(8, "big", signed=True), dumps(value, PROTOCOL))

        def incr(index: int) -> int:
            with env.begin(write=True) as txn:
                old = txn.get(key(index))
                new = (loads(old) if old is not None else 0) + 1
                txn.put(key(index), dumps(new, PROTOCOL))
                return int(new)

        self._key = key
        self.ops = Ops(get, put, incr)

    def fill(self, indices: range, value: Any) -> None:
        data = pickle.dumps(value, PROTOCOL)
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
    """lmdb as it comes (sync=True: each commit flushes), which is how the targets were first
    measured against it; on tmpfs the flush is a system call, not a disk write."""

    name = "lmdb, defaults"
    note = "lmdb on /dev/shm, one transaction per operation, default settings (sync=True)"
    sync = True
    variant = True  # point operations only: the other cases would repeat lmdb's figures
