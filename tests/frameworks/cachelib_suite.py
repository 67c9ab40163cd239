"""cachelib's common cache test classes against ``shmfs.contrib.cachelib``.

Copied by ``python -m tests.frameworks`` into the unpacked ``tests/`` directory of cachelib's
sdist (its imports are theirs: ``common``, ``clear``...) and run there by pytest, under their
``conftest.py`` and their pytest settings. The cache's name and options come from the
environment. Each test runs with and without a key prefix (their ``key_prefix`` fixture), and
with the cache's codec and with their test serializer (as their Redis tests do).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from clear import ClearTests
from common import CommonTests
from delete_many_with_prefix import DeleteManyWithPrefixTests
from has import HasTests
from serializer import SerializerTests
from test_simple_cache import SillySerializer

from shmfs.contrib.cachelib import ShmfsCache

NAME = os.environ["SHMFS_FRAMEWORK_LOCATION"]
OPTIONS = json.loads(os.environ["SHMFS_FRAMEWORK_OPTIONS"])


@pytest.fixture(autouse=True, params=[None, SillySerializer], ids=["codec", "serializer"])
def cache_factory(request: Any, key_prefix: str | None) -> Iterator[None]:
    made: list[ShmfsCache] = []

    def _factory(self: Any, *args: Any, **kwargs: Any) -> ShmfsCache:
        kwargs.setdefault("key_prefix", key_prefix)
        cache = ShmfsCache(NAME, *args, **OPTIONS, **kwargs)
        if request.param is not None:
            cache.serializer = request.param()
        cache.clear()  # a fresh cache, as their Redis factory flushes the database
        made.append(cache)
        return cache

    request.cls.cache_factory = _factory
    yield
    for cache in made:
        cache.close()


class TestShmfsCache(CommonTests, ClearTests, HasTests, DeleteManyWithPrefixTests, SerializerTests):
    """Every common test class cachelib's Redis cache runs."""
