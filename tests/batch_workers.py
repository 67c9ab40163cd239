"""Targets for the child processes of the batch tests (spawned or forkserved, so importable).

A batch is ``{index: checked_value(seq, size)}`` with one ``seq`` for every index: a reader
that finds two ``seq`` in one ``get_many`` saw half a batch.
"""

from __future__ import annotations

from typing import Any

from tests.workers import checked_value, is_intact, open_seg


def batch_of(indexes: list[int], seq: int, large: bool) -> dict[int, Any]:
    """The batch ``seq``: small values, and with ``large`` one in two over a slot's size,
    alternating with ``seq`` so that no index keeps a value with a file of its own twice in a
    row (on tmpfs such a replacement is written apart from the batch: see the README)."""
    return {
        index: checked_value(seq, 70_000 if large and (seq + n) % 2 else 100 + 50 * n)
        for n, index in enumerate(indexes)
    }


def put_batches_forever(
    ref: dict[str, Any], indexes: list[int], first: int, large: bool, started: Any
) -> None:
    """Store batch after batch, ``first`` onwards, until killed."""
    with open_seg(ref) as seg:
        seq = first
        while True:
            seg.put_many(batch_of(indexes, seq, large))
            if seq == first:
                started.set()
            seq += 1


def put_batches(ref: dict[str, Any], indexes: list[int], count: int, start: Any) -> int:
    """Meet the readers at ``start`` (a barrier), store ``count`` batches (with large values),
    return the last seq."""
    with open_seg(ref) as seg:
        start.wait(30)
        for seq in range(1, count + 1):
            seg.put_many(batch_of(indexes, seq, True))
    return count


def read_batches(ref: dict[str, Any], indexes: list[int], start: Any, stop: Any) -> dict[str, int]:
    """Meet the others at ``start`` (a barrier), then ``get_many`` the batch until ``stop``;
    count whole batches and torn or mixed ones."""
    counts = {"whole": 0, "mixed": 0, "torn": 0, "partial": 0}
    with open_seg(ref) as seg:
        start.wait(30)
        while not stop.is_set():
            found = seg.get_many(indexes)
            if not found:
                continue  # before the first batch
            if len(found) != len(indexes):
                counts["partial"] += 1
            elif not all(is_intact(value) for value in found.values()):
                counts["torn"] += 1
            elif len({value["seq"] for value in found.values()}) != 1:
                counts["mixed"] += 1
            else:
                counts["whole"] += 1
    return counts
