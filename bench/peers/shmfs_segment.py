"""shmfs itself, on each of its backends, through its public API only."""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Any

import shmfs
from bench.peers.redis import serve
from bench.redis_server import RedisServer
from bench.scratch import Scratch
from bench.system import Footprint, Ops, System, Unavailable, bytes_on_disk
from shmfs import hotpath

__all__ = ["ShmfsSystem"]


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
            server = serve(scratch)
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
