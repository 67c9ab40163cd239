"""Segment.view: values read where they lie in shared memory, kept still while viewed.

On tmpfs a view of a value with a file of its own (too big for a slot) is zero-copy, so what
must hold is that nothing changes the viewed bytes while
the view is open, whoever writes (this handle, another handle, another process), and that a
viewer that dies does not slow writers for ever. A small tmpfs value's view, and every view on
sysv and redis, is a private copy.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import numpy as np
import pytest

import shmfs
from shmfs.backends.tmpfs import segdir
from tests.conftest import segment_ref
from tests.tmpfs_files import LARGE, slot_of
from tests.workers import Children, put_values, view_forever

WAIT = 60


def test_view_of_bytes_is_a_read_only_memoryview(seg: shmfs.Segment) -> None:
    for value in (b"", b"small", os.urandom(60_000), os.urandom(300_000)):
        seg[1] = value
        with seg.view(1) as view:
            assert isinstance(view, memoryview) and view.readonly
            assert view == value
    seg[2] = "not bytes"
    with seg.view(2) as view:
        assert view == "not bytes"


def test_view_of_numpy_arrays_and_other_values(seg: shmfs.Segment) -> None:
    array = np.arange(20_000, dtype=np.float64).reshape(100, 200)
    seg[1] = {"weights": array, "name": "model"}
    with seg.view(1) as value:
        assert value["name"] == "model"
        assert np.array_equal(value["weights"], array)
        assert value["weights"].dtype == np.float64 and value["weights"].shape == (100, 200)
        if seg.backend == "tmpfs":  # the stored bytes themselves, so they must not be writable
            assert not value["weights"].flags.writeable and not value["weights"].flags.owndata
    seg[2] = "plain"
    with seg.view(2) as value:
        assert value == "plain"
    with pytest.raises(shmfs.VariableNotFound), seg.view(3):
        pass


def test_out_of_band_values_get_as_private_writable_copies(seg: shmfs.Segment) -> None:
    array = np.arange(1000, dtype=np.int32)
    seg[1] = array
    got = seg[1]
    assert np.array_equal(got, array) and got.flags.writeable
    got[0] = 99  # a copy of our own: the stored value is untouched
    assert seg[1][0] == 0
    seg[2] = [bytearray(b"abc"), np.zeros(3)]
    first, second = seg[2]
    assert first == bytearray(b"abc") and type(first) is bytearray and not second.any()


def _meta_word(seg: shmfs.Segment, word: int) -> int:
    with open(os.path.join(seg.stats()["location"], segdir.META_NAME), "rb") as meta:
        return int.from_bytes(meta.read()[8 * word : 8 * word + 8], "little")


class TestZeroCopy:
    """tmpfs, where views are zero-copy (the tests above run on every backend)."""

    @pytest.fixture
    def backend(self) -> str:
        return "tmpfs"

    @pytest.mark.parametrize("size", [100, 100_000])
    def test_viewed_bytes_stay_still_while_writers_write(
        self, attach: Any, key: int, size: int
    ) -> None:
        seg, other = attach(key, 4 << 20), attach(key)
        first = np.full(size, 1, dtype=np.uint8)
        seg[1] = first
        with seg.view(1) as view:
            for round_no in range(2, 6):  # more writes than there are slots
                seg[1] = np.full(size, round_no, dtype=np.uint8)
                other[1] = np.full(size, round_no + 10, dtype=np.uint8)
            assert np.array_equal(view, first)
            assert other[1][0] == 15 and seg[1][0] == 15
            del other[1]
            assert np.array_equal(view, first)  # removed, but not scrubbed under the view
            assert 1 not in seg
        seg[1] = b"after"
        assert seg[1] == b"after" and _meta_word(seg, segdir.VIEWS) == 0

    def test_writers_in_other_processes_are_not_blocked_by_a_view(
        self, seg: shmfs.Segment, spawn_ctx: Any
    ) -> None:
        seg[1] = b"viewed"
        values = [os.urandom(500) for _ in range(50)]
        with seg.view(1) as view:
            children = Children(spawn_ctx)
            children.start(put_values, segment_ref(seg), 1, values)
            (seconds,) = children.results(WAIT)
            assert view == b"viewed"
        assert seconds < 30 and seg[1] == values[-1]

    def test_a_killed_viewer_leaves_writers_in_place(
        self, seg: shmfs.Segment, spawn_ctx: Any
    ) -> None:
        """A viewer SIGKILLed in its view: its flock goes with it, so the next writer sees nobody
        views, resets the count, and writes in place again (same file, no new one per put).
        About files: a value with a file of its own (only those are viewed in place)."""
        seg[1] = b"x" * LARGE
        viewing = spawn_ctx.Event()
        viewer = spawn_ctx.Process(target=view_forever, args=(segment_ref(seg), 1, viewing))
        viewer.start()
        try:
            assert viewing.wait(WAIT)
            assert _meta_word(seg, segdir.VIEWS) == 1
            location = os.path.join(seg.stats()["location"], "1")
            inode = os.stat(location).st_ino
            seg[1] = b"y" * LARGE
            assert os.stat(location).st_ino != inode  # viewed: published as a new file
        finally:
            os.kill(viewer.pid, signal.SIGKILL)
            viewer.join(WAIT)
        inode = os.stat(location).st_ino
        seg[1] = b"z" * LARGE
        assert _meta_word(seg, segdir.VIEWS) == 0
        assert os.stat(location).st_ino == inode and seg[1] == b"z" * LARGE  # in place again

    def test_views_nest_and_count_back_to_zero(
        self, seg: shmfs.Segment, key: int, attach: Any
    ) -> None:
        """Views in place (large values) are counted; a small value's view is a private copy
        and is not."""
        seg[1], seg[2], seg[3] = b"one" * LARGE, b"two" * LARGE, b"small"
        other = attach(key)
        with seg.view(1) as one, seg.view(2) as two, other.view(1) as again, seg.view(3) as small:
            assert _meta_word(seg, segdir.VIEWS) == 3
            assert (one, two, again) == (b"one" * LARGE, b"two" * LARGE, b"one" * LARGE)
            assert small == b"small"
        assert _meta_word(seg, segdir.VIEWS) == 0

    def test_a_small_values_view_is_a_private_copy(self, seg: shmfs.Segment) -> None:
        """A value in a slot is viewed as a copy: no view is counted, writers reuse and zero
        its slot at once, and the view keeps the bytes it was given."""
        seg[1] = b"small and viewed"
        path = slot_of(seg, 1)[0]
        with seg.view(1) as view:
            assert _meta_word(seg, segdir.VIEWS) == 0
            seg[1] = b"replaced"
            del seg[1]
            with open(path, "rb") as slab:
                assert b"small and viewed" not in slab.read()  # its slot was zeroed
            assert view == b"small and viewed"

    def test_untrusted_pickles_are_not_viewed(
        self, seg: shmfs.Segment, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        seg[1] = np.zeros(4)
        monkeypatch.setattr(type(seg._backend), "trusted", lambda self, index: False)
        with pytest.raises(shmfs.UnsafeSegment), seg.view(1):
            pass
        assert _meta_word(seg, segdir.VIEWS) == 0

    def test_a_view_is_the_shared_memory_itself(self, seg: shmfs.Segment) -> None:
        """Bytes changed in the file under the view show through it: no copy was made."""
        value = os.urandom(200_000)
        seg[1] = value
        path = os.path.join(seg.stats()["location"], "1")
        with open(path, "rb") as file:
            offset = file.read().index(value)
        with seg.view(1) as view:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.pwrite(fd, bytes([value[0] ^ 0xFF]), offset)
            finally:
                os.close(fd)
            assert view[0] == value[0] ^ 0xFF

    def test_the_views_file_is_made_when_missing(self, attach: Any, key: int) -> None:
        """A segment that lost its .views file: the first view makes it again, for writers
        alone (here, the owner: the group may only read)."""
        seg = attach(key, 1 << 20, 0o640)
        path = os.path.join(seg.stats()["location"], segdir.VIEWS_NAME)
        assert os.stat(path).st_mode & 0o777 == 0o600
        os.unlink(path)
        other = attach(key)
        seg[1] = b"value" * LARGE  # viewed in place: its own file
        with other.view(1) as view:
            assert view == b"value" * LARGE
            assert os.stat(path).st_mode & 0o777 == 0o600
            seg[1] = b"other" * LARGE  # a writer still sees the view
            assert view == b"value" * LARGE
