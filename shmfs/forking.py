"""Process identity: a counter that changes in every child process, so handles know to reopen
after ``fork``, and whether a pid is alive.

Asking ``os.getpid()`` on every call would cost a system call on each get and put (glibc stopped
caching the pid in 2.25); a module-level counter bumped by ``os.register_at_fork`` costs a load.
"""

from __future__ import annotations

import os

__all__ = ["fork_epoch", "pid_alive"]

_epoch = 0


def _bump() -> None:
    global _epoch  # noqa: PLW0603  # one process-wide counter is the point
    _epoch += 1


os.register_at_fork(after_in_child=_bump)


def fork_epoch() -> int:
    """The current epoch: it differs in a forked child from what the parent saw."""
    return _epoch


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this pid exists in our PID namespace (``kill(pid, 0)``)."""
    if not pid or pid < 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True
