"""redis-py against a redis-server of ours: what a socket daemon costs per operation."""

from __future__ import annotations

import contextlib
import os
import pickle
from typing import Any, Self

from bench.redis_server import RedisServer, ServerError
from bench.scratch import Scratch
from bench.system import PROTOCOL, Footprint, Ops, System, Unavailable, import_peer

__all__ = ["Redis", "serve"]


def serve(scratch: Scratch) -> RedisServer:
    """A redis-server for this run, stopped when the run's scratch closes (even if the caller
    never gets it); ``Unavailable`` if there is no server to start."""
    import_peer("redis", "pip install redis")
    folder = scratch.tmp_path("redis")
    os.mkdir(folder, 0o700)
    try:
        server = RedisServer.start(folder, timeout=10)
    except ServerError as exc:
        raise Unavailable(str(exc)) from exc
    scratch.on_close("redis-server", server.stop)
    return server


class Redis(System):
    name = "redis-py (unix socket)"
    shared = True
    note = "redis-py GET/SET/INCR against a redis-server of ours on a unix socket, pickled values"

    @classmethod
    def create(cls, scratch: Scratch) -> Self:
        server = serve(scratch)
        system = cls({"socket": server.socket}, owner=True)
        system.server = server
        return system

    def __init__(self, params: dict[str, Any], *, owner: bool) -> None:
        super().__init__(params, owner=owner)
        redis = import_peer("redis", "pip install redis")
        self.server: RedisServer | None = None
        self.client = client = redis.Redis(unix_socket_path=params["socket"])
        dumps, loads = pickle.dumps, pickle.loads
        get_raw, set_raw = client.get, client.set

        def get(index: int) -> Any:
            return loads(get_raw(index))

        def put(index: int, value: Any) -> None:
            set_raw(index, dumps(value, PROTOCOL))

        self.ops = Ops(get, put, client.incr)

    def fill(self, indices: range, value: Any) -> None:
        data = pickle.dumps(value, PROTOCOL)
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
