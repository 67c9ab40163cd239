"""Acting as another user, for the tests of what other users can and cannot do: the test runs
as root and forks a child that drops to the user (the project's Python may live where an
unprivileged user cannot exec it, so a fork, not an exec)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from typing import Any

__all__ = ["as_user"]


def as_user(uid: int, action: Callable[[], Any]) -> Any:
    """Run ``action`` in a forked child with uid and gid ``uid``; return what it returned, or
    ``{"error": <class name>, "message": ..., "owner": ...}`` if it raised, or
    ``{"signal": <name>}`` if the child was killed by a signal."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            try:
                result: Any = action()
            except Exception as exc:
                result = {
                    "error": type(exc).__name__,
                    "message": str(exc),
                    "owner": getattr(exc, "owner", None),
                }
            os.write(write_end, json.dumps(result, default=repr).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return {"signal": signal.Signals(os.WTERMSIG(status)).name}
    assert os.waitstatus_to_exitcode(status) == 0, "the child failed outside its action"
    return json.loads(b"".join(chunks))
