"""A redis-server of our own, on a unix socket in a directory we own: started, waited for, stopped.

The one launcher of the project: the bench starts its servers with it, and so does the test suite
(``tests/conftest.py``, ``tests/test_redis.py``), so a flag fixed here is fixed for both. It needs
only the ``redis-server`` binary and the ``redis`` package, and imports neither shmfs nor the rest
of the bench.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from typing import Any

__all__ = ["RedisServer", "ServerError"]

SOCKET = "redis.sock"


class ServerError(RuntimeError):
    """redis-server is not installed, or did not start; the message says which."""


class RedisServer:
    """One redis-server process listening on ``socket`` (and on ``port`` of 127.0.0.1 if asked)."""

    def __init__(self, process: subprocess.Popen[bytes], socket: str) -> None:
        self.process = process
        self.socket = socket

    @property
    def url(self) -> str:
        """The server's address as shmfs's ``root=`` takes it."""
        return f"unix://{self.socket}"

    @classmethod
    def start(
        cls,
        directory: str,
        *,
        persist: bool = False,
        socket_perm: str = "700",
        port: int = 0,
        timeout: float = 20.0,
        wrapper: tuple[str, ...] = (),
    ) -> RedisServer:
        """Start a server whose socket and files live in ``directory``; return once it answers.

        ``persist``: an append-only file synced on every write, so a restart in the same
        directory finds the data again; else nothing is saved. ``port`` 0: no TCP listener.
        ``wrapper``: a command the server runs under (``valgrind ...``: bench.redis_scripts).
        Started in a session of its own, so a Ctrl-C meant for the caller does not stop it under
        a running test or case; the caller stops it (:meth:`stop`).

        Raises:
            ServerError: no redis-server or redis package, or the server did not answer in time.
        """
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerError("redis-server is not installed (apt-get install redis-server)")
        try:
            import redis  # noqa: PLC0415  # only users of a server need the client
        except ImportError as exc:
            raise ServerError("the redis package is not installed (pip install redis)") from exc
        socket = os.path.join(directory, SOCKET)
        saving = ("--appendonly", "yes", "--appendfsync", "always")
        if not persist:
            saving = ("--save", "", "--appendonly", "no")
        process = subprocess.Popen(
            [
                *wrapper,
                *(binary, "--port", str(port), "--bind", "127.0.0.1"),
                *("--unixsocket", socket, "--unixsocketperm", socket_perm),
                *saving,
                *("--dir", directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        server = cls(process, socket)
        try:
            server._wait(redis, timeout)
        except BaseException:
            server.stop()  # a failed start, or a Ctrl-C while waiting, leaves no server behind
            raise
        return server

    def _wait(self, redis: Any, timeout: float) -> None:
        client = redis.Redis(unix_socket_path=self.socket)
        deadline = time.monotonic() + timeout
        try:
            while True:  # the server gives no other sign that it listens
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise ServerError("redis-server did not start") from None
                    time.sleep(0.01)
        finally:
            client.close()

    def used_memory(self) -> int:
        """The server's own count of the memory it uses (``INFO memory``)."""
        import redis  # noqa: PLC0415  # start() made sure it is installed

        with contextlib.closing(redis.Redis(unix_socket_path=self.socket)) as client:
            return int(client.info("memory")["used_memory"])

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it lingers); idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
