"""``multiprocessing.shared_memory``: the standard library's shared memory, a floor for sharing."""

from __future__ import annotations

import contextlib
import multiprocessing.shared_memory
import pickle
import resource
from typing import Any, Self

from bench.scratch import Scratch
from bench.system import PROTOCOL, Footprint, Ops, Spec, System, bytes_on_disk

__all__ = ["SharedMemory"]


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
            data = dumps(value, PROTOCOL)
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
