"""The floors: what storing a value costs with no sharing (a dict), with only the encoding
(pickle), and with only the copy into and out of shared memory (memcpy)."""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
from typing import Any, Self

from bench.scratch import Scratch
from bench.system import PROTOCOL, Ops, System

__all__ = ["MemcpyFloor", "PickleFloor", "PlainDict"]


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
            data[index] = dumps(value, PROTOCOL)

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
