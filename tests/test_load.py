"""Load and resource use: many processes on many variables and segments, destroy racing
with users, descriptors under a small RLIMIT_NOFILE, and memory for a large value."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import shmfs
from tests.conftest import segment_ref
from tests.workers import Children, churn_until_gone, fill_disjoint


def test_many_processes_many_variables_many_segments(
    attach: Any, backend: str, where: str, key: int, spawn_ctx: Any
) -> None:
    keys = [key, key + 1, key + 2]
    segs = [attach(k, 4 << 20) for k in keys]
    start = spawn_ctx.Event()
    children = Children(spawn_ctx)
    ref = {"backend": backend, "root": where}
    try:
        for worker in range(4):
            children.start(fill_disjoint, ref, keys, worker * 250, 250, start)
        start.set()
        assert children.results(120) == [750] * 4
    finally:
        children.stop()
    for seg in segs:
        assert list(seg) == list(range(1000))
        assert all(seg[i] == {"index": i, "key": seg.key} for i in range(1000))
        if backend == "tmpfs":
            names = os.listdir(seg.stats()["location"])
            assert not [name for name in names if name.startswith(".tmp-")]


def test_listing_and_destroy_racing_with_users(seg: shmfs.Segment, spawn_ctx: Any) -> None:
    running = [spawn_ctx.Event() for _ in range(3)]
    children = Children(spawn_ctx)
    try:
        for event in running:
            children.start(churn_until_gone, segment_ref(seg), event)
        for event in running:
            assert event.wait(60), "a child never got going"
        for _ in range(300):  # listing while others rewrite and remove (sysv once walked an
            assert set(seg) <= {1, 2}  # unlocked chain mid-compaction here)
        seg.destroy()
        results = children.results(60)
    finally:
        children.stop()
    for outcome in results:
        assert set(outcome) <= {"ok", "SegmentNotFound", "VariableNotFound"}, results
        assert outcome.get("SegmentNotFound") == 1, results


def _run(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
        check=False,
    )


def test_no_descriptor_leak_under_a_small_rlimit(where: str, backend: str, key: int) -> None:
    root = where
    done = _run(
        f"""
        import resource, shmfs
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        seg = shmfs.attach({key}, 1 << 22, backend={backend!r}, root={root!r})
        for op in range(10_000):
            index = op % 40  # fewer variables than the mapping cache keeps
            seg[index] = op
            assert seg[index] == op
            if op % 1000 == 0:
                shmfs.attach({key}, backend={backend!r}, root={root!r}).detach()
        seg.destroy()
        print("ok")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


BIG = int(os.environ.get("SHMFS_BIG_VALUE", str(64 << 20)))


@pytest.mark.parametrize("size", [BIG], ids=lambda size: f"{size >> 20}MiB")
def test_large_value_round_trips_with_bounded_memory(root: str, key: int, size: int) -> None:
    done = _run(
        f"""
        import os, resource, shmfs
        value = os.urandom({size})
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        seg = shmfs.attach({key}, 4 * {size}, root={root!r}, codec="raw")
        seg[1] = value
        assert seg[1] == value
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        seg.destroy()
        print((peak - base) / {size})
        """
    )
    assert done.returncode == 0, done.stderr
    extra = float(done.stdout)
    assert extra <= 3.5, f"peak memory grew by {extra:.1f}x the value"


@pytest.mark.stress
def test_one_gib_value(root: str, key: int) -> None:
    test_large_value_round_trips_with_bounded_memory(root, key, 1 << 30)
