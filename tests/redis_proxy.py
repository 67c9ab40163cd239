"""A fault-injecting proxy between a client and a redis-server, both on unix sockets.

It forwards bytes both ways until a request carrying ``marker`` passes: that request reaches the
server, and then the proxy cuts every connection and refuses new ones (an outage that begins
after the server got the change and before the client got its reply) until ``heal()``.

Or, with ``cut_reply(marker, keep, times)``, the next ``times`` requests carrying ``marker`` each
get the first ``keep`` bytes of their reply and then that connection alone is cut (a reply cut
mid-way), or, with ``stall=True``, left open with nothing more sent (a server that stalls);
other connections, and new ones, are forwarded as ever.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading

__all__ = ["Proxy"]


class Proxy:
    """Listens on ``path`` and forwards to the server socket ``target``."""

    def __init__(self, path: str, target: str) -> None:
        self.path = path
        self._target = target
        self.marker: bytes | None = None
        self._cut: tuple[bytes, int, bool] | None = None
        self.cuts_left = 0
        self.tripped = threading.Event()
        self._down = False
        self._stop = False
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        os.chmod(path, 0o700)
        self._listener.listen(16)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._down or self._stop:
                client.close()
                continue
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(self._target)
            with self._lock:
                self._pairs.append((client, server))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while not self._down:
                ready, _, _ = select.select([client, server], [], [], 0.05)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        server.sendall(data)
                        if self._cutting(data):
                            self._cut_reply(client, server)
                            return
                        if self.marker is not None and self.marker in data:
                            self._trip()
                            # The server runs it: its reply comes back, and is dropped.
                            if select.select([server], [], [], 10)[0]:
                                server.recv(65536)
                            return
                    else:
                        client.sendall(data)
        except OSError:
            return
        finally:
            client.close()
            server.close()

    def _trip(self) -> None:
        self._down = True
        self.marker = None
        self.tripped.set()

    def cut_reply(self, marker: bytes, keep: int, times: int = 1, *, stall: bool = False) -> None:
        """Cut (or stall) the replies to the next ``times`` requests carrying ``marker`` after
        ``keep`` bytes."""
        with self._lock:
            self._cut, self.cuts_left = (marker, keep, stall), times

    def _cutting(self, data: bytes) -> bool:
        with self._lock:
            if self._cut is None or self.cuts_left <= 0 or self._cut[0] not in data:
                return False
            self.cuts_left -= 1
            return True

    def _cut_reply(self, client: socket.socket, server: socket.socket) -> None:
        assert self._cut is not None
        _, keep, stall = self._cut
        reply = b""
        while len(reply) < keep and select.select([server], [], [], 10)[0]:
            got = server.recv(keep - len(reply))
            if not got:
                break
            reply += got
        client.sendall(reply)
        # Stalled: nothing more until the client gives up and closes its end.
        while stall and not self._stop and select.select([client], [], [], 10)[0]:
            if not client.recv(65536):
                break

    def heal(self) -> None:
        """End the outage: new connections are forwarded again."""
        self._down = False

    def close(self) -> None:
        self._stop = self._down = True
        self._listener.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
