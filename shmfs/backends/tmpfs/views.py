"""Views: values handed out where they lie in a mapping, which no writer may then overwrite.

Only large variables (``largevars.py``) are viewed in place; a slot's frame is a few KiB at most
and is copied. Viewers hold a shared flock on the segment's ``.views`` file; a writer that sees
the metadata's VIEWS count non-zero tries an exclusive flock on it, and if that fails (someone
views) it publishes a new file instead of writing in place, and leaves the old file's bytes
alone. The count only spares writers that system call when nobody views; the flock is the
truth, and a viewer that died leaves no flock, so the next writer resets the count.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable

from shmfs.backends.fsutil import open_file, translate
from shmfs.backends.tmpfs import segdir as sd

__all__ = ["Views"]


class Views:
    """One handle's part in the views protocol.

    Args:
        key: The segment's key, for messages.
        perm: The segment's permission bits (for a views file made late).
        dir_fd: The segment directory (a callable: it is reopened after a fork).
    """

    def __init__(self, key: int, perm: int, dir_fd: Callable[[], int]) -> None:
        self._key = key
        self._perm = perm
        self._dir_fd = dir_fd
        self._views_fd = -1  # flocked LOCK_SH while this handle has views open
        self._probe_fd = -1  # writers test, through this one, whether any handle has views open
        self._views = 0  # views this handle has open

    def _views_file(self) -> int:
        # Writers' alone, like the segment lock (mode lock_mode(perm)): a reader who could
        # open it could flock it exclusively, and a viewer would then wait under the segment
        # lock forever. A handle that may only read copies instead of viewing in place.
        what = f"segment {self._key} views file"
        try:
            fd, _ = open_file(sd.VIEWS_NAME, self._dir_fd(), write=True, what=what)
        except FileNotFoundError:  # lost (removed by hand): writers may make it again
            sd.make_views_file(self._dir_fd(), self._perm)
            fd, _ = open_file(sd.VIEWS_NAME, self._dir_fd(), write=True, what=what)
        return fd

    def hold(self, meta: memoryview) -> None:
        """Count a view this handle opens. Segment lock held."""
        try:
            if self._views == 0:
                if self._views_fd < 0:
                    self._views_fd = self._views_file()
                fcntl.flock(self._views_fd, fcntl.LOCK_SH)  # writers only ever probe it
        except OSError as exc:
            raise translate(exc, f"segment {self._key}: cannot open a view") from exc
        self._views += 1
        meta[sd.VIEWS] += 1

    def drop(self, meta: memoryview) -> None:
        """Count a view this handle closes. Segment lock held."""
        self._views -= 1
        if self._views == 0:
            fcntl.flock(self._views_fd, fcntl.LOCK_UN)
        if meta[sd.VIEWS]:
            meta[sd.VIEWS] -= 1

    def viewed(self, meta: memoryview) -> bool:
        """Whether any handle, this one included, has a view open. Segment lock held."""
        if not meta[sd.VIEWS]:
            return False
        try:
            if self._probe_fd < 0:  # a description of its own: our own views' flock counts
                self._probe_fd = self._views_file()
            fcntl.flock(self._probe_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError as exc:
            raise translate(exc, f"segment {self._key}: cannot check for views") from exc
        fcntl.flock(self._probe_fd, fcntl.LOCK_UN)
        meta[sd.VIEWS] = 0  # nobody views: the count was left by viewers that died
        return False

    def after_fork(self) -> None:
        """Forget the parent's descriptors (closed, never unlocked: the parent's flock stays)."""
        self.close()
        self._views = 0  # the parent's views are the parent's

    def close(self) -> None:
        """Close this handle's descriptors. Idempotent."""
        for fd in (self._views_fd, self._probe_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._views_fd = self._probe_fd = -1
