"""The segment lock on Redis: a lease, ``SET NX PX`` of a token naming its holder.

The token is ``host:pid:space:random``, where ``space`` names the kernel boot and PID namespace;
it is released by a script that deletes it only if the token is still ours. Failure modes:

- *A holder dies on this host, in our PID namespace*: a waiter sees the pid is gone and frees
  the lock at once. Only then: a pid means nothing in another namespace (containers with host
  networking share a hostname but not pids), so the hostname alone is never trusted for it.
- *A holder dies elsewhere* (another host, container or namespace): its lock expires after
  ``lock_expiry`` seconds (default 10). While a holder lives, a daemon thread
  (:mod:`shmfs.backends.redis.renewal`) extends its lock every third of that, so a long critical
  section keeps it.
- *A holder stalls longer than the expiry* (SIGSTOP, a paused VM, cut off from the server): it
  loses exclusivity, and another process may take the lock. Its late writes cannot clobber the
  new holder's: every write script checks the token first (a fencing check), and a holder whose
  lock is gone gets ``LockTimeout`` with nothing written. What it did outside shmfs in the
  meantime, no lock can undo.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any, Final

import redis

from shmfs.backends.redis import scripts
from shmfs.backends.redis.guard import Guard
from shmfs.backends.redis.listing import text
from shmfs.backends.redis.renewal import renewer
from shmfs.errors import BackendUnavailable, LockTimeout
from shmfs.forking import pid_alive

__all__ = ["HOST", "SPACE", "Lease", "Waiter", "describe", "holder_pid"]

_FIRST_POLL: Final = 0.0005
_MAX_POLL: Final = 0.02
#: Seconds between attempts to release a lock whose release the server did not get.
RELEASE_RETRY: Final = 0.2


def _pid_space() -> str | None:
    """The kernel boot and PID namespace this process's pids mean something in, or ``None``."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as boot:
            boot_id = boot.read().strip().replace("-", "")[:12]
        return f"{boot_id}-{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return None


HOST: Final = socket.gethostname().replace(":", "_")
# Unchanged by fork (a child stays in its parent's PID namespace), so computed once.
SPACE: Final = _pid_space()


def holder_pid(token: str) -> int | None:
    """The holder's pid, if it is in our PID namespace (so that we can check it is alive)."""
    parts = token.split(":")
    if SPACE is not None and len(parts) == 4 and parts[2] == SPACE and parts[1].isdigit():
        return int(parts[1])
    return None


def describe(token: str) -> str:
    """The holder a token names, for messages."""
    parts = token.split(":")
    return f"pid {parts[1]} on {parts[0]}" if len(parts) >= 2 else "another process"


class Lease:
    """Taking, renewing and giving back one segment's lock on one client."""

    def __init__(self, key: int, lock_key: str, expiry: float, guard: Guard) -> None:
        self.key = key
        self.lock_key = lock_key
        self.expiry = expiry
        self._expiry_ms = round(expiry * 1000)
        self._guard = guard
        self._client: redis.Redis | None = None
        self._take: Callable[..., object] | None = None
        self._release: Callable[..., object] | None = None
        self._renew: Callable[..., object] | None = None
        #: Tokens of locks given back while the server was unreachable (see give()).
        self.pending: set[str] = set()

    def bind(self, client: redis.Redis) -> None:
        """Use ``client`` from now on (a new one after fork)."""
        self._client = client
        self._take = client.register_script(scripts.TAKE)
        self._release = client.register_script(scripts.RELEASE)
        self._renew = client.register_script(scripts.RENEW)

    def waiter(self, timeout: float | None) -> Waiter:
        """A wait for the lock to be free, of at most ``timeout`` seconds from now."""
        assert self._release is not None
        return Waiter(self, timeout)

    def free_dead(self, holder: str) -> bool:
        """Free the lock if ``holder`` died in our PID namespace; whether it did."""
        pid = holder_pid(holder)
        if pid is None or pid_alive(pid):
            return False
        # Not at expiry: now (the script deletes it only if it is still that holder's).
        assert self._release is not None
        with self._guard:
            self._release(keys=[self.lock_key], args=[holder])
        return True

    def take(self, timeout: float | None) -> str:
        """Wait for the lock (``LockTimeout`` after ``timeout`` s); return our token."""
        client, take = self._client, self._script(self._take)
        assert client is not None
        token = f"{HOST}:{os.getpid()}:{SPACE or '-'}:{secrets.token_hex(8)}"
        waiter = self.waiter(timeout)
        with self._guard:
            while not take(keys=[self.lock_key], args=[token, self._expiry_ms]):
                raw = client.get(self.lock_key)
                holder = text(raw) if raw else ""
                if holder == token:
                    break  # our SET went through but its reply was lost, and redis-py retried
                waiter.pause(holder)
        renewer().hold(token, self._renewal(token), self.expiry / 3)
        return token

    def _renewal(self, token: str) -> Callable[[], bool]:
        script, keys = self._renew, [self.lock_key]
        assert script is not None
        args: list[str | int] = [token, self._expiry_ms]

        def renew() -> bool:
            try:
                return bool(script(keys=keys, args=args))
            except redis.RedisError:
                return True  # unreachable for now: retried next period, and may still lapse

        return renew

    def give(self, token: str) -> None:
        """Release the lock ``token`` holds (nothing if it expired meanwhile).

        A release the server does not get (it is down, or restarting) is not an error of the
        caller's: the changes made under the lock are each committed or reported already. It
        is retried in the background every ``RELEASE_RETRY`` seconds and on this handle's next
        connection, so a server restarted from its append-only file does not keep a live
        holder's released lock until its expiry.
        """
        renewer().drop(token)
        try:
            with self._guard:
                # 0 if the lock expired while held: any write after that was refused already.
                self._script(self._release)(keys=[self.lock_key], args=[token])
        except BackendUnavailable:
            self.pending.add(token)
            renewer().hold(f"release {token}", self._retry_release(token), RELEASE_RETRY)

    def _retry_release(self, token: str) -> Callable[[], bool]:
        script, keys = self._script(self._release), [self.lock_key]

        def retry() -> bool:
            if token not in self.pending:
                return False  # released on a reconnection meanwhile
            try:
                script(keys=keys, args=[token])
            except redis.RedisError:
                return True  # still unreachable: try again next period
            self.pending.discard(token)
            return False

        return retry

    def on_connect(self, conn: Any) -> None:
        """On each new connection: release the locks whose release the server did not get."""
        for token in list(self.pending):
            conn.send_command("EVAL", scripts.RELEASE, 1, self.lock_key, token)
            try:
                conn.read_response()
            except redis.ResponseError:
                continue  # another cluster node's key: the background retry routes it
            self.pending.discard(token)

    @staticmethod
    def _script(script: Callable[..., object] | None) -> Callable[..., object]:
        assert script is not None, "bind() comes first"
        return script


class Waiter:
    """Waiting for another holder's lock: backs off, frees a dead holder's at once, and raises
    ``LockTimeout`` at the deadline."""

    def __init__(self, lease: Lease, timeout: float | None) -> None:
        self._lease = lease
        self._timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._poll = _FIRST_POLL

    def pause(self, holder: str) -> None:
        """``holder`` has the lock: free it if it died, else sleep a while (or time out)."""
        if holder and self._lease.free_dead(holder):
            return
        deadline = self._deadline
        if deadline is not None and time.monotonic() >= deadline:
            lease = self._lease
            who = describe(holder) if holder else "another process"
            raise LockTimeout(
                f"segment {lease.key}: lock not acquired within {self._timeout:.3g} s (held by "
                f"{who}; a holder that died elsewhere loses it within "
                f"lock_expiry={lease.expiry:g} s)",
                key=lease.key,
                holder_pid=holder_pid(holder),
                timeout=self._timeout,
            )
        poll = self._poll
        time.sleep(poll if deadline is None else max(min(poll, deadline - time.monotonic()), 0))
        self._poll = min(poll * 2, _MAX_POLL)
