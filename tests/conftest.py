"""Fixtures: a private root under /dev/shm per test, fresh keys, the backend parametrisation, and
a guard that fails any test leaving files behind."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import shutil
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import shmfs

BACKENDS = ["tmpfs"]


@pytest.fixture
def root() -> Iterator[str]:
    """A fresh root under /dev/shm; the test fails if anything is left in it afterwards."""
    path = f"/dev/shm/shmfs-test-{uuid.uuid4().hex}"
    os.mkdir(path, 0o700)
    try:
        yield path
        leftovers = sorted(os.listdir(path))
        assert not leftovers, f"test leaked {leftovers} under {path}"
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def key() -> int:
    """A segment key no other test uses (tests get private roots, so this only needs to be
    unlikely to collide for backends without roots)."""
    return random.randrange(0x10000000, 0x7FFFFFFF)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every backend, in turn."""
    return str(request.param)


@pytest.fixture
def attach(backend: str, root: str) -> Iterator[Callable[..., shmfs.Segment]]:
    """``shmfs.attach`` bound to this test's backend and root; destroys what it attached."""
    made: list[shmfs.Segment] = []

    def _attach(key: int, *args: Any, **kwargs: Any) -> shmfs.Segment:
        kwargs.setdefault("backend", backend)
        kwargs.setdefault("root", root)
        seg = shmfs.attach(key, *args, **kwargs)
        made.append(seg)
        return seg

    yield _attach
    for seg in made:
        seg.detach()
    for seg_key in {seg.key for seg in made}:
        with contextlib.suppress(shmfs.ShmfsError):
            shmfs.attach(seg_key, backend=backend, root=root).destroy()


@pytest.fixture
def seg(attach: Callable[..., shmfs.Segment], key: int) -> shmfs.Segment:
    """A fresh 1 MiB segment on this test's backend."""
    return attach(key, 1 << 20)


@pytest.fixture
def spawn_ctx() -> Any:
    """A spawn multiprocessing context: children start clean, as unrelated processes do."""
    return multiprocessing.get_context("spawn")


def segment_ref(seg: shmfs.Segment) -> dict[str, Any]:
    """What a child needs to attach the same segment."""
    return {"key": seg.key, "backend": seg.backend, "root": seg._spec["root"]}
