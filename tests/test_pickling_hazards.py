"""Values whose pickling or unpickling runs code that works against the handle, on every backend
and on both tmpfs paths: a ``__reduce__`` that forks while the segment lock is held, and an
unpickling that has side effects and then fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest

import shmfs

_CALLS: list[str] = []


def _explode(tag: str) -> None:
    """Unpickling calls this: a side effect, then a failure."""
    _CALLS.append(tag)
    raise RuntimeError(f"{tag} cannot be rebuilt here")


class _Explodes:
    def __reduce__(self) -> tuple[Callable[[str], None], tuple[str]]:
        return _explode, ("exploding",)


def test_a_failing_decode_runs_once(seg: shmfs.Segment) -> None:
    """A get decodes a value once: when the C get's decode fails, the Python path does not
    decode it again (the unpickling's side effects would run twice)."""
    seg[1] = _Explodes()
    _CALLS.clear()
    with pytest.raises(shmfs.SerializationError, match="cannot be rebuilt") as raised:
        seg.get(1)
    assert _CALLS == ["exploding"]
    assert isinstance(raised.value.__cause__, RuntimeError)
    seg.remove(1)


# The child reports how its part of the operation ended; the parent, inside the same operation,
# waits for the child, then notes what the variable holds, before its own write.
_FORKING = """
import json, os, sys
import shmfs

key, backend, root, how = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
seg = shmfs.attach(key, 1 << 20, backend=backend, root=root, lock_timeout=1)
seg[1] = "before"
in_child = False
seen = None


class Forks:
    def __reduce__(self):
        global in_child, seen
        pid = os.fork()
        if pid == 0:
            in_child = True
            return (str, ("child",))
        os.waitpid(pid, 0)
        seen = seg.get(1)
        return (str, ("parent",))


try:
    if how == "update":
        seg.update(1, lambda old: Forks())
    else:
        with seg.lock():
            seg.put(1, Forks())
    outcome = "done"
except shmfs.ShmfsError as exc:
    outcome = type(exc).__name__ + ": " + str(exc)
except Exception as exc:
    outcome = "unexpected " + type(exc).__name__ + ": " + str(exc)
if in_child:
    with open(sys.argv[5], "w") as report:
        report.write(outcome)
    os._exit(0)
print(json.dumps({"parent": outcome, "seen": seen, "final": seg.get(1)}))
seg.destroy()
"""


@pytest.mark.parametrize("how", ["update", "lock"])
def test_a_fork_while_pickling_under_the_lock(
    attach: Callable[..., shmfs.Segment], key: int, where: str, tmp_path: Any, how: str
) -> None:
    """A value's ``__reduce__`` forks while this thread holds the segment lock (in ``update``,
    or in a ``put`` inside ``seg.lock()``): the child holds none of that lock, so it must not
    write under its parent's lock descriptor or token, beside its parent. In ``update`` the
    write comes without taking the lock again, and is refused; in the ``put`` the child takes
    the lock afresh, and waits for its parent (here, which waits for it, until the timeout)."""
    backend = attach(key, 1 << 20).backend
    report = tmp_path / "child"
    child = subprocess.Popen(  # our own interpreter and script
        [
            sys.executable,
            "-c",
            textwrap.dedent(_FORKING),
            str(key),
            backend,
            where,
            how,
            str(report),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so that a hung fork is killed with it
    )
    try:
        out, err = child.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        pytest.fail("the forked child or its parent hangs")
    assert child.returncode == 0, err
    result = json.loads(out)
    assert result == {"parent": "done", "seen": "before", "final": "parent"}, result
    said = report.read_text()
    if how == "update":
        assert said.startswith("ShmfsError") and "forked" in said, said
    else:
        assert said.startswith("LockTimeout"), said
