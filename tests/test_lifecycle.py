"""The C fast path pulled from under itself: finalizers, closed handles, damaged counters.

A collection can start at any allocation, and its finalizers can run any code, detaching the
very handle a C call is using; each case here once crashed the interpreter (or wrote a wrong
count) and runs in a child process, so that a crash is a failed test, not a dead test run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest

import shmfs
from shmfs import hotpath
from shmfs.backends.tmpfs import layout

pytestmark = pytest.mark.skipif(not hotpath.available(), reason="the C module is not built")


@pytest.fixture
def backend() -> str:
    """These are about the C module's hold on tmpfs handles."""
    return "tmpfs"


def _run(root: str, key: int, body: str) -> subprocess.CompletedProcess[str]:
    script = textwrap.dedent(
        f"""
        import gc, shmfs
        seg = shmfs.attach({key}, 1 << 22, root={root!r})
        """
    ) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("pad", [0, 6000], ids=["slot", "large"])
def test_a_finalizer_that_detaches_during_the_fast_put(root: str, key: int, pad: int) -> None:
    """The put checks that the value is plain before it pickles it; iterating a frozenset
    allocates, a collection runs, and a finalizer detaches the handle. The put must not use
    what the handle let go of."""
    done = _run(
        root,
        key,
        f"""
        seg[0] = "x" * {pad + 1}
        seg[0], seg[0]  # mapped, for a large value

        class Detacher:
            def __init__(self):
                self.me = self  # a cycle: only a collection frees it
            def __del__(self):
                seg.detach()

        for _ in range(50):
            Detacher()
        gc.set_threshold(1)
        try:
            seg.put(0, {{"tags": frozenset({{"a", "b"}}), "pad": "y" * {pad}}})
        except shmfs.SegmentDetached:
            pass
        gc.set_threshold(700)
        print("alive")
        """,
    )
    assert done.returncode == 0 and done.stdout == "alive\n", (done.returncode, done.stderr)
    with shmfs.attach(key, root=root) as seg:
        assert seg[0] in ("x" * (pad + 1), {"tags": frozenset({"a", "b"}), "pad": "y" * pad})
        seg.destroy()


def test_a_finalizer_that_empties_a_list_being_checked(root: str, key: int) -> None:
    """The plainness check walks a list while a finalizer, run by a collection that a nested
    frozenset's iterator starts, empties it: the items must be held, not borrowed."""
    done = _run(
        root,
        key,
        """
        seg[0] = "x"
        victim = [frozenset({str(n)}) for n in range(40)]

        class Emptier:
            def __init__(self):
                self.me = self
            def __del__(self):
                victim.clear()

        for _ in range(50):
            Emptier()
        gc.set_threshold(1)
        seg.put(0, victim)
        gc.set_threshold(700)
        print("alive", type(seg[0]).__name__)
        seg.destroy()
        """,
    )
    assert done.returncode == 0 and done.stdout == "alive list\n", (done.returncode, done.stderr)


def test_a_closed_fast_path_stays_closed(seg: shmfs.Segment) -> None:
    """``reset`` and ``index`` after ``close`` (a recovery racing a close) revive nothing: every
    call answers SLOW."""
    seg[1] = "value"
    backend: Any = seg._backend
    hot, lock, index = backend.hot, backend._lock, backend._index
    hot.close()
    hot.reset(lock, 0, 0)
    hot.index(index.words, index.gen)
    assert hot.get(1) is hotpath.SLOW
    assert hot.put(1, shmfs.codecs.get_codec("cloudpickle").id, "other") is hotpath.SLOW
    assert seg[1] == "value"


def test_a_used_count_near_two_to_the_64_does_not_wrap(seg: shmfs.Segment) -> None:
    """A damaged USED word makes every put SegmentFull (the Python path's arithmetic), never a
    sum the C code wraps into a small count and writes."""
    seg[1] = "v" * 100
    seg[2] = "v" * 100  # so that the C put finds its slot class's file, with room
    words = seg._backend._meta  # type: ignore[attr-defined]
    used = words[layout.M_USED]
    words[layout.M_USED] = (1 << 64) - 2
    with pytest.raises(shmfs.SegmentFull):
        seg.put(2, "w" * 104)  # four bytes more, in the same slot class: the sum would wrap
    assert words[layout.M_USED] == (1 << 64) - 2 and seg[2] == "v" * 100
    words[layout.M_USED] = used


@pytest.mark.parametrize("pad", [0, 6000], ids=["slot", "large"])
def test_a_finalizer_that_detaches_during_the_fast_get(root: str, key: int, pad: int) -> None:
    """The get allocates the bytes it copies into; a collection there detaches the handle. The
    mapping it is copying from must stay mapped until the get is done (the C module lets go of
    what it keeps only when no call of its runs)."""
    done = _run(
        root,
        key,
        f"""
        seg[0] = "x" * {pad + 1}
        seg[0], seg[0]  # mapped, for a large value

        class Detacher:
            def __init__(self):
                self.me = self
            def __del__(self):
                seg.detach()

        got = []
        for _ in range(20):
            for _ in range(50):
                Detacher()
            gc.set_threshold(1)
            try:
                got.append(seg.get(0) == "x" * {pad + 1})
            except shmfs.SegmentDetached:
                got.append(True)
            gc.set_threshold(700)
            seg = shmfs.attach({key}, root={root!r})
        print("alive", all(got))
        seg.destroy()
        """,
    )
    assert done.returncode == 0 and done.stdout == "alive True\n", (done.returncode, done.stderr)


def test_a_slice_that_closes_the_mapping_is_refused(tmp_path: Any) -> None:
    """``Mapping`` (the C module's descriptor-free mapping) converts a slice before it checks it
    is open: a slice whose ``__index__`` closes it gets ValueError, never a copy from or a write
    to an unmapped address."""
    path = tmp_path / "mapped"
    path.write_bytes(bytes(4096))
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import os
                from shmfs import hotpath
                fd = os.open({str(path)!r}, os.O_RDWR)
                mapping = hotpath.map_file(fd, 4096, writable=True)
                os.close(fd)
                print(type(mapping).__name__)

                class Closes:
                    def __index__(self):
                        mapping.close()
                        return 10

                for use in (lambda: mapping[Closes():20], lambda: mapping.__setitem__(
                        slice(Closes(), 20), b"x" * 10)):
                    try:
                        use()
                        print("used")
                    except ValueError:
                        print("refused")
                    mapping = hotpath.map_file(os.open({str(path)!r}, os.O_RDWR), 4096,
                                               writable=True)
                """
            ),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, (done.returncode, done.stderr)
    kind, *outcomes = done.stdout.split()
    if kind != "Mapping":
        pytest.skip("mmap.mmap maps here (Python 3.13): its own checks apply")
    assert outcomes == ["refused", "refused"]
    assert path.read_bytes() == bytes(4096)
