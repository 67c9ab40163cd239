"""redis: the connection each thread keeps for its single operations between calls.

Held out of redis-py's pool, it must behave as a pooled one would: no reply left unread on it
by an interrupted call, given back when its thread ends, and not used in a forked child.
"""

from __future__ import annotations

import gc
import os
import threading

import pytest

import shmfs
from shmfs.backends.redis import call

redis = pytest.importorskip("redis")


@pytest.fixture(autouse=True)
def _no_leaked_keys(redis_leak_guard: None) -> None:
    """Every test here: ``redis_leak_guard`` (tests/conftest.py)."""


def test_an_interrupted_call_leaves_no_reply_for_the_next(redis_url: str, key: int) -> None:
    seg = shmfs.attach(key, 4096, backend="redis", root=redis_url, codec="json")
    try:
        seg[1] = "one"
        seg[2] = "two"
        held = call._held.slot.conn

        def interrupted() -> None:
            del held.read_response  # once: the class's own again
            raise KeyboardInterrupt  # the request went; its reply is never read

        held.read_response = interrupted
        with pytest.raises(KeyboardInterrupt):
            seg.get(1)
        assert seg.get(2) == "two"  # not the reply meant for the interrupted get
        seg.put(3, "three")
        assert seg[3] == "three"
    finally:
        seg.destroy()


def test_threads_that_end_give_their_connections_back(redis_url: str, key: int) -> None:
    seg = shmfs.attach(key, 4096, backend="redis", root=redis_url, codec="json")
    try:
        threads = [threading.Thread(target=seg.put, args=(n, n)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        del threads
        gc.collect()
        pool = seg._backend.client.connection_pool  # type: ignore[union-attr]
        in_use = pool._in_use_connections - {call._held.slot and call._held.slot.conn}
        assert not in_use
        assert [seg[n] for n in range(8)] == list(range(8))
    finally:
        seg.destroy()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_uses_its_parents_connection(redis_url: str, key: int) -> None:
    seg = shmfs.attach(key, 4096, backend="redis", root=redis_url, codec="json")
    try:
        seg[1] = "parent"
        parents = call._held.slot.conn
        pid = os.fork()
        if pid == 0:  # the child: its own connection, the parent's socket untouched
            code = 1
            try:
                seg[2] = "child"
                code = 0 if call._held.slot.conn is not parents and seg[1] == "parent" else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
        assert seg[2] == "child"
        assert call._held.slot.conn is parents  # still ours, still in step
        assert seg[1] == "parent"
    finally:
        seg.destroy()
