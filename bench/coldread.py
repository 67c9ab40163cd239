"""The machine's own cold-read floor: one random byte of a mapped /dev/shm file as large as a
segment's data, read through the same kind of Python loop the gets are timed in.

A get among 10 variables finds everything in cache; a random get among a million misses the
cache and the TLB at the index bucket and again at the value's slot, two loads that depend on
each other. What one such miss costs is the machine's, not shmfs's: on a VM with nested paging
a TLB miss alone walks two page tables. So the scale rows report, next to shmfs's figures, a
random single-byte read from a mapping of the same size, cold and (10 offsets over and over)
hot, measured in the same process: the difference is one miss, and a ratio target that asks for
less than two of them over the hot get is beyond what this machine can do.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import random

from bench.timing import Stats, bracket_ns, time_gets, to_us

__all__ = ["ColdRead", "floor_stats"]


class ColdRead:
    """A mapped, fully written /dev/shm file of ``nbytes``; ``read(offset)`` is its byte."""

    def __init__(self, path: str, nbytes: int) -> None:
        self.path, self.nbytes = path, max(nbytes, mmap.PAGESIZE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, self.nbytes)
            self._mm = mmap.mmap(fd, self.nbytes)
        finally:
            os.close(fd)
        # Every page written once, as a filled segment's are: its mapping is populated, so a
        # read meets cache and TLB misses, not page faults.
        chunk = b"\x01" * (1 << 20)
        for start in range(0, self.nbytes, len(chunk)):
            self._mm[start : start + len(chunk)] = chunk[: self.nbytes - start]
        self.read = self._mm.__getitem__

    def offsets(self, count: int, seed: int, *, shuffled: bool = True) -> list[int]:
        """``count`` offsets drawn uniformly over the file. ``shuffled``: made in one order and
        listed in another, as ``bench/scale.py``'s shuffled indices are, so that each int
        object lies apart from the last one read and the floor pays that miss too (the fill
        curve's indices are drawn in the order they are read: ``shuffled=False`` there)."""
        rng = random.Random(seed)
        drawn = [rng.randrange(self.nbytes) for _ in range(count)]
        if shuffled:
            rng.shuffle(drawn)
        return drawn

    def close(self) -> None:
        self._mm.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def floor_stats(path: str, nbytes: int, count: int, seed: int) -> dict[str, Stats]:
    """The floor timed as the fill curve times gets, one read at a time: ``cold``, ``count``
    random offsets of an ``nbytes`` mapping; ``hot``, 10 of them over and over."""
    floor = ColdRead(path, nbytes)
    try:
        bracket = bracket_ns(2000)
        offsets = floor.offsets(count, seed, shuffled=False)
        cold = Stats.of(to_us(time_gets(floor.read, offsets), bracket))
        hot = Stats.of(to_us(time_gets(floor.read, offsets[:10] * (count // 10 + 1)), bracket))
        return {"cold": cold, "hot": hot}
    finally:
        floor.close()
