"""The C fast path's error paths call no Python code with an exception pending.

CPython's C API must not be called with an exception set: Python code run then can lose the
exception, or fail with ``SystemError`` in whatever C call it makes next (the interpreter checks
each call's result against the error indicator). Each error path of ``shmfs._hot`` that goes on
to call Python is reached here: a truthiness test, with an object whose ``__bool__`` records
whether an exception was pending when it ran (it makes a C call, ``operator.call(int)``, and
catches the ``SystemError`` that call raises then); the lock's ``release``, which returns with
the exception still set, so that the call fails with ``SystemError``.

The mappings' tuples a handle hands the C code (``VarFile.hot``, ``SlabFile.hot``) are replaced
by ones with an integer too big for a length, as damaged Python state would give; the lock's
failed ``LOCK_UN`` comes from a preloaded ``flock`` that fails it for one descriptor (a child
process: nothing else in the kernel makes an unlock fail).
"""

from __future__ import annotations

import errno
import json
import operator
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import shmfs
from shmfs import hotpath
from shmfs.backends import SLOW
from shmfs.backends.tmpfs.slabs import split_location

pytestmark = pytest.mark.skipif(not hotpath.available(), reason="the C module is not built")

TOO_BIG = 1 << 70  # no Py_ssize_t: PyLong_AsSsize_t raises OverflowError


class Probe:
    """Truthy; records, for each truth test, the exception pending when it ran (or None)."""

    def __init__(self) -> None:
        self.pending: list[BaseException | None] = []

    def __bool__(self) -> bool:
        self.pending.append(pending_exception())
        return True


def pending_exception() -> BaseException | None:
    """The exception a C caller left set while this Python code runs, if any: a C call's result
    check then raises SystemError from it (and clears it)."""
    try:
        operator.call(int)
    except SystemError as exc:
        return exc.__cause__ or exc
    return None


class Mapped:
    """Stands in for a VarFile or SlabFile: the C code reads only its ``hot`` tuple."""

    def __init__(self, hot: tuple[Any, ...]) -> None:
        self.hot = hot


@pytest.fixture
def seg(root: str, key: int) -> Any:
    seg = shmfs.attach(key, 1 << 20, root=root, codec="pickle")
    yield seg
    seg.destroy()


def test_a_large_variables_bad_capacity_ends_the_get_before_any_python_call(seg: Any) -> None:
    seg[7] = b"v" * 100_000
    assert seg[7] == b"v" * 100_000  # mapped now (a second read)
    seg[7] = b"w" * 100_000
    backend = seg._backend
    assert seg[7] == b"w" * 100_000
    real = backend._large.vars[7]
    words, capacity, _, writable = real.hot
    # The same get reaches the truth test with a good capacity: the path is the one below.
    control = Probe()
    backend._large.vars[7] = Mapped((words, capacity, control, writable))
    backend.hot.get(7)
    assert control.pending == [None]
    probe = Probe()
    backend._large.vars[7] = Mapped((words, TOO_BIG, probe, writable))
    try:
        assert backend.hot.get(7) is SLOW
    finally:
        backend._large.vars[7] = real
    assert [exc for exc in probe.pending if exc is not None] == []
    assert seg[7] == b"w" * 100_000


def _slab_of(seg: Any, index: int) -> tuple[int, int]:
    backend = seg._backend
    loc = backend._current_index().find(index)[0]
    number, file, _ = split_location(loc)
    return number, file


def test_a_slab_files_bad_size_ends_the_mapping_before_any_python_call(seg: Any, root: str) -> None:
    seg[3] = "small"
    number, file = _slab_of(seg, 3)
    for size_is_bad in (False, True):  # the good size first: the path is the one below
        fresh = shmfs.attach(seg.key, root=root)
        try:
            backend: Any = fresh._backend  # type: ignore[attr-defined]  # the test's hook
            real = backend._slabs.file(number, file)  # mapped, in Python
            words, size, slots, _, writable = real.hot
            probe = Probe()
            mapped = Mapped((words, TOO_BIG if size_is_bad else size, slots, probe, writable))
            backend._slabs.files[number << 16 | file] = mapped
            got = backend.hot.get(3)
            backend._slabs.files[number << 16 | file] = real
            if size_is_bad:
                assert got is SLOW
                assert [exc for exc in probe.pending if exc is not None] == []
            else:
                assert got == "small"
                assert probe.pending == [None]
        finally:
            fresh.detach()


_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/file.h>

/* flock(2), failing LOCK_UN on the descriptor $SHMFS_TEST_FAIL_UNLOCK names. */
int
flock(int fd, int operation)
{
    static int (*real)(int, int);
    if (real == NULL) {
        real = (int (*)(int, int))dlsym(RTLD_NEXT, "flock");
    }
    const char *failing = getenv("SHMFS_TEST_FAIL_UNLOCK");
    if (failing != NULL && (operation & LOCK_UN) && fd == atoi(failing)) {
        errno = EIO;
        return -1;
    }
    return real(fd, operation);
}
"""

_CHILD = """
import array, json, os, sys, threading
import shmfs
from shmfs import codecs
from shmfs.locking import LockInterface

seg = shmfs.attach({key}, 1 << 20, root={root!r}, codec="pickle")
seg[1] = "old"
backend = seg._backend
fd = os.open({lockfile!r}, os.O_RDWR | os.O_CREAT, 0o600)
thread_lock = threading.RLock()
words = array.array("q", [0, fd, 0])
lock = LockInterface(thread_lock.acquire, thread_lock.release, words, lambda: None)
backend.hot.reset(lock, backend._recoveries, backend._dirty_tag)
os.environ["SHMFS_TEST_FAIL_UNLOCK"] = str(fd)
try:
    backend.hot.put(1, codecs.get_codec("pickle").id, "new")
    raised = None
except BaseException as exc:
    raised = [type(exc).__name__, getattr(exc, "errno", None), repr(exc.__cause__)]
del os.environ["SHMFS_TEST_FAIL_UNLOCK"]
owned = thread_lock._is_owned()
seg.destroy()
print(json.dumps({{"raised": raised, "owned": owned}}))
"""


def test_a_failed_unlock_gives_the_thread_lock_back_with_no_exception_pending(
    root: str, key: int, tmp_path: Path
) -> None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler is not None, "the C module was built here, so a compiler is"
    (tmp_path / "shim.c").write_text(_SHIM, encoding="ascii")
    shim = tmp_path / "shim.so"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-o", str(shim), str(tmp_path / "shim.c"), "-ldl"],
        check=True,
    )
    env = dict(os.environ)
    # After any sanitizer runtime already preloaded (.ci/sanitize): it must come first.
    env["LD_PRELOAD"] = f"{env.get('LD_PRELOAD', '')} {shim}".strip()
    code = _CHILD.format(
        tests=str(Path(__file__).parent),
        key=key,
        root=root,
        lockfile=str(tmp_path / "lock"),
    )
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    # The release, called with the OSError pending, would return with it set: SystemError.
    assert report["raised"] == ["OSError", errno.EIO, "None"], report
    assert report["owned"] is False, report  # the thread lock was given back
