"""Resource faults on a real, small tmpfs: a full filesystem and exhausted inodes.

Docker gives containers a 64 MB /dev/shm; filling it must raise ``SegmentFull`` naming the cause
and the fix, never kill a process with SIGBUS, and leave every stored value readable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator

import pytest

import shmfs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def small_tmpfs(request: pytest.FixtureRequest) -> Iterator[str]:
    """A private tmpfs mount (options from the test's parameter), unmounted afterwards."""
    options = getattr(request, "param", "size=1m")
    mountpoint = tempfile.mkdtemp(prefix="shmfs-small-")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"{options},mode=0700", "tmpfs", mountpoint],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        os.rmdir(mountpoint)
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield os.path.join(mountpoint, "root")
    finally:
        subprocess.run(["umount", mountpoint], check=True)
        os.rmdir(mountpoint)


def test_full_filesystem_raises_segment_full(small_tmpfs: str) -> None:
    seg = shmfs.attach(0x5EED, 64 << 20, root=small_tmpfs)
    stored = {}
    with pytest.raises(shmfs.SegmentFull) as info:
        for index in range(1000):
            value = bytes([index % 256]) * 50_000
            seg[index] = value
            stored[index] = value
    assert "filesystem is full" in str(info.value)
    assert "--shm-size" in str(info.value)
    assert len(stored) > 5
    for index, value in stored.items():
        assert seg[index] == value
    location = seg.stats()["location"]
    with seg.lock():
        assert not [name for name in os.listdir(location) if name.startswith(".tmp-")]
    # Replacing a value in place needs no new space, so it still works on a full filesystem.
    seg[0] = b"\x07" * 50_000
    assert seg[0] == b"\x07" * 50_000
    for index in list(stored)[: len(stored) // 2]:
        del seg[index]
    seg[5000] = b"room again" * 1000
    assert seg[5000] == b"room again" * 1000
    seg.destroy()


def test_oversized_value_never_sigbus(small_tmpfs: str) -> None:
    script = textwrap.dedent(
        f"""
        import shmfs
        seg = shmfs.attach(0x5EED, 64 << 20, root={small_tmpfs!r})
        seg[1] = "small"
        try:
            seg[1] = b"x" * (2 << 20)
        except shmfs.SegmentFull as exc:
            print("SegmentFull", seg[1])
        seg.destroy()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr  # -7 would be SIGBUS
    assert done.stdout.strip() == "SegmentFull small"


def _big(index: int) -> str:
    """A value with a file (an inode) of its own: too big for a slot."""
    return f"{index}:" + "x" * 5000


@pytest.mark.parametrize("small_tmpfs", ["size=4m,nr_inodes=16"], indirect=True)
def test_inode_exhaustion_raises_segment_full(small_tmpfs: str) -> None:
    """About files: large values, each taking an inode, until none is left."""
    seg = shmfs.attach(0x5EED, 64 << 20, root=small_tmpfs)
    created = 0
    with pytest.raises(shmfs.SegmentFull):
        for index in range(100):
            seg[index] = _big(index)
            created += 1
    assert 0 < created < 16
    assert all(seg[index] == _big(index) for index in range(created))
    with pytest.raises(shmfs.SegmentFull):
        shmfs.attach(0x5EEE, root=small_tmpfs)  # no inode left for a new segment either
    del seg[0]
    seg[500] = _big(500)
    assert seg[500] == _big(500)
    seg.destroy()


@pytest.mark.parametrize("small_tmpfs", ["size=4m,nr_inodes=16"], indirect=True)
def test_many_small_values_fit_where_inodes_are_few(small_tmpfs: str) -> None:
    """Small values share slab files: a thousand of them (and the index's growth past its
    first table, several times) fit in a tmpfs with 16 inodes."""
    seg = shmfs.attach(0x5EED, 4 << 20, root=small_tmpfs)
    for index in range(1000):
        seg[index] = f"small value {index}"
    assert all(seg[index] == f"small value {index}" for index in range(1000))
    assert len(seg) == 1000
    assert len(os.listdir(seg.stats()["location"])) < 12
    seg.destroy()
