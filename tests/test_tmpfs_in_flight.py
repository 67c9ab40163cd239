"""tmpfs only: a detach while another thread is inside a lock-free read.

tmpfs reads take no lock (sysv's and redis's do, and the lock already puts a close off until
its holder lets go). Such a read opens files by name relative to the segment directory's
descriptor, so a close that lands between the read taking the descriptor's number and its
``openat`` would let the number be reused for another directory: the read would then return
another segment's value. The close waits until the read returns; the read sees its own value,
or ``SegmentDetached``. Both paths run (the C get sends such reads to Python).
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
import shutil
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import shmfs

# Ceiling on every wait: far above what any step takes, low enough to fail a hung test fast.
WAIT = 20.0
BIG = 100_000  # past a slot: the value has a file of its own


@pytest.fixture
def backend(tmpfs_backend: str) -> str:
    """Lock-free reads are tmpfs's: with the C module and without it."""
    return tmpfs_backend


@pytest.fixture
def other_root() -> Iterator[str]:
    """A second root, for the segment whose directory takes a freed descriptor's number."""
    path = f"/dev/shm/shmfs-test-{uuid.uuid4().hex}"
    os.mkdir(path, 0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _other_segment(key: int, root: str, values: dict[int, Any]) -> Iterator[str]:
    """Segment ``key`` under ``root`` holding ``values``; yields its directory."""
    other = shmfs.attach(key, 64 << 20, root=root)
    try:
        for index, value in values.items():
            other[index] = value
        other.detach()
        yield os.path.join(root, str(key))
    finally:
        shmfs.attach(key, root=root).destroy()


def _mark_unread(directory: str) -> None:
    """Set every file's access time in ``directory`` to 0: a read or a mapping of it sets it
    afresh (tmpfs under ``relatime``: an access time older than the change time is updated)."""
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        os.utime(path, ns=(0, os.stat(path).st_mtime_ns), follow_symlinks=False)


def _read_files(directory: str) -> list[str]:
    """The files in ``directory`` read or mapped since ``_mark_unread``."""
    return sorted(
        name
        for name in os.listdir(directory)
        if os.stat(os.path.join(directory, name), follow_symlinks=False).st_atime_ns != 0
    )


def _grab(number: int, directory: str, held: list[int]) -> bool:
    """Open ``directory`` until a descriptor numbered ``number`` comes back (at most 64 tries;
    ``held`` keeps every descriptor opened); whether it did."""
    for _ in range(64):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        held.append(fd)
        if fd == number:
            return True
        if fd > number:
            return False
    return False


def test_a_read_paused_on_the_directory_descriptor_reads_its_own_segment(
    attach: Callable[..., shmfs.Segment], key: int, other_root: str
) -> None:
    seg = attach(key, 64 << 20)
    seg[7] = ("ours", b"o" * BIG)
    large: Any = seg._backend._large  # type: ignore[attr-defined]  # the test's hook
    directory = large._dir_fd
    took, go_on = threading.Event(), threading.Event()
    numbers: list[int] = []

    def paused() -> int:
        number = directory()
        large._dir_fd = directory  # once
        numbers.append(number)
        took.set()
        assert go_on.wait(WAIT)
        return number  # used by the read's openat now

    large._dir_fd = paused
    outcome: list[Any] = []

    def read() -> None:
        try:
            outcome.append(seg.get(7))
        except BaseException as exc:  # the test inspects whatever it was
            outcome.append(exc)

    held: list[int] = []
    reader = threading.Thread(target=read, daemon=True)
    with _other_segment(key, other_root, {7: ("theirs", b"t" * BIG)}) as theirs:
        _mark_unread(theirs)
        try:
            reader.start()
            assert took.wait(WAIT)
            seg.detach()
            # Before the fix the number was free now, and the other directory took it.
            _grab(numbers[0], theirs, held)
            go_on.set()
            reader.join(WAIT)
            assert not reader.is_alive()
        finally:
            go_on.set()
            for fd in held:
                os.close(fd)
        assert _read_files(theirs) == [], "the read opened another segment's file"
    (got,) = outcome
    if isinstance(got, BaseException):
        assert isinstance(got, shmfs.SegmentDetached), repr(got)
    else:
        assert got[0] == "ours", got[0]
    with pytest.raises(shmfs.SegmentDetached):
        seg.get(7)


def test_the_last_read_in_flight_closes_the_handle(
    attach: Callable[..., shmfs.Segment], key: int
) -> None:
    """A detach during a read closes nothing until the read returns, and then everything."""
    seg = attach(key, 64 << 20)
    seg[7] = b"v" * BIG
    backend: Any = seg._backend  # type: ignore[attr-defined]  # the test's hook
    large = backend._large
    directory = large._dir_fd
    dir_fd = backend.dir_fd
    seen: list[bool] = []

    def detaching() -> int:
        large._dir_fd = directory
        seg.detach()  # a finalizer's, say: from inside the read
        seen.append(_is_open(dir_fd))
        return directory()

    large._dir_fd = detaching
    assert seg.get(7) == b"v" * BIG  # the read finishes on its own files
    assert seen == [True]
    assert not backend.is_open()
    assert backend.dir_fd == -1


def _watched_inodes(inotify_fd: int) -> list[int]:
    """The inodes an inotify descriptor of this process watches (its fdinfo lists them)."""
    with open(f"/proc/self/fdinfo/{inotify_fd}", encoding="ascii") as info:
        return [
            int(field[4:], 16)
            for line in info
            if line.startswith("inotify ")
            for field in line.split()
            if field.startswith("ino:")
        ]


def test_a_watch_begun_during_a_detach_watches_its_own_segment(
    attach: Callable[..., shmfs.Segment],
    key: int,
    other_root: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A watch opens ``.notify`` through the directory's descriptor number: a detach between
    taking the number and the open must not let it name another segment's directory."""
    from shmfs.backends.tmpfs import waiters  # noqa: PLC0415  # the test's hook

    seg = attach(key, 64 << 20)
    seg[1] = "ours"
    ours = os.stat(os.path.join(seg.stats()["location"], ".notify")).st_ino
    took, go_on = threading.Event(), threading.Event()
    numbers: list[int] = []

    watched: list[int] = []

    class Paused(waiters.FileWatch):  # type: ignore[misc]
        def __init__(self, dir_fd: int, name: str) -> None:
            numbers.append(dir_fd)
            took.set()
            assert go_on.wait(WAIT)
            super().__init__(dir_fd, name)
            watched.extend(_watched_inodes(self.fileno()))

    monkeypatch.setattr(waiters, "FileWatch", Paused)
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    outcome: list[Any] = []

    def watch() -> None:
        try:
            outcome.append(seg.watch(1))
        except BaseException as exc:  # the test inspects whatever it was
            outcome.append(exc)

    held: list[int] = []
    starter = threading.Thread(target=watch, daemon=True)
    with _other_segment(key, other_root, {1: "theirs"}) as theirs:
        theirs_notify = os.stat(os.path.join(theirs, ".notify")).st_ino
        try:
            starter.start()
            assert took.wait(WAIT)
            seg.detach()
            _grab(numbers[0], theirs, held)
            go_on.set()
            starter.join(WAIT)
            assert not starter.is_alive()
        finally:
            go_on.set()
            for fd in held:
                os.close(fd)
        (got,) = outcome
        if not isinstance(got, BaseException):
            got.close()
        assert isinstance(got, shmfs.SegmentDetached), repr(got)  # (the detach came first)
        assert theirs_notify not in watched, "the watch was on another segment's file"
        assert watched == [ours]
    del got, outcome[:]
    gc.collect()
    assert unraisable == [], "a failed watch() complained from its finalizer"


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------------- the stress


class _Round:
    """Readers on one handle of segment A; a closer detaches it, then opens segment B's
    directory over and over, so that freed descriptor numbers name B's directory."""

    def __init__(self, seg: shmfs.Segment, indices: int, theirs: str, seed: int) -> None:
        self.seg = seg
        self.indices = indices
        self.theirs = theirs
        self.rng = random.Random(seed)
        self.closed = threading.Event()
        self.errors: list[str] = []
        self.held: list[int] = []

    def reader(self, number: int) -> None:
        order = list(range(self.indices))
        random.Random(number).shuffle(order)
        for index in order * 2:
            try:
                got = self.seg.get(index)
            except shmfs.SegmentDetached:
                if not self.closed.is_set():
                    self.errors.append(f"index {index}: detached before the detach")
                return
            except Exception as exc:  # any other error is the finding
                self.errors.append(f"index {index}: {exc!r}")
                return
            if got[0] != "A" or got[1] != index:
                self.errors.append(f"index {index}: read {got[:2]!r}, the other segment's")

    def closer(self) -> None:
        for _ in range(self.rng.randrange(1, 40)):
            self.seg.get(self.rng.randrange(self.indices), None)
        self.closed.set()
        self.seg.detach()
        for _ in range(24):
            self.held.append(os.open(self.theirs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))


def _values(name: str, indices: int) -> dict[int, Any]:
    return {i: (name, i, b"x" * (BIG if i % 2 else 100)) for i in range(indices)}


@pytest.mark.parametrize("rounds", [40])
def test_readers_detach_and_reused_descriptors(
    attach: Callable[..., shmfs.Segment], key: int, other_root: str, rounds: int
) -> None:
    indices = 32
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: the race is between two bytecodes
    try:
        with _other_segment(key, other_root, _values("B", indices)) as theirs:
            writer = attach(key, 64 << 20)
            for index, value in _values("A", indices).items():
                writer[index] = value
            writer.detach()
            _mark_unread(theirs)
            for seed in range(rounds):
                state = _Round(attach(key, 64 << 20), indices, theirs, seed)
                threads = [threading.Thread(target=state.reader, args=(n,)) for n in range(4)]
                threads.append(threading.Thread(target=state.closer))
                try:
                    for thread in threads:
                        thread.start()
                    for thread in threads:
                        thread.join(WAIT)
                        assert not thread.is_alive()
                finally:
                    for fd in state.held:
                        os.close(fd)
                assert not state.errors, (seed, state.errors[:5])
                assert _read_files(theirs) == [], (seed, "a read opened the other segment's files")
    finally:
        sys.setswitchinterval(interval)
