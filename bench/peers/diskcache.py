"""diskcache on /dev/shm: the process-safe cache Python users reach for first."""

from __future__ import annotations

import os
import shutil
from typing import Any, Self

from bench.scratch import Scratch
from bench.system import Footprint, Ops, System, bytes_on_disk, checkpoint_sqlite, import_peer

__all__ = ["DiskCache"]


class DiskCache(System):
    name = "diskcache"
    shared = True
    in_shm = True
    note = "diskcache.Cache on /dev/shm, default settings (SQLite index, pickled values)"

    @classmethod
    def create(cls, scratch: Scratch) -> Self:
        import_peer("diskcache", "pip install diskcache")
        return cls({"dir": scratch.shm_path("diskcache")}, owner=True)

    def __init__(self, params: dict[str, Any], *, owner: bool) -> None:
        super().__init__(params, owner=owner)
        diskcache = import_peer("diskcache", "pip install diskcache")
        self.cache = cache = diskcache.Cache(params["dir"])
        self.ops = Ops(cache.get, cache.set, cache.incr)

    def fill(self, indices: range, value: Any) -> None:
        with self.cache.transact():
            for index in indices:
                self.cache.set(index, value)

    def reset_counter(self, index: int) -> None:
        self.cache.set(index, 0)

    def footprint(self) -> Footprint | None:
        checkpoint_sqlite(os.path.join(self.params["dir"], "cache.db"))
        return bytes_on_disk(self.params["dir"])

    def close(self) -> None:
        if not self.closed:
            self.cache.close()
            if self.owner:
                shutil.rmtree(self.params["dir"], ignore_errors=True)
        super().close()
