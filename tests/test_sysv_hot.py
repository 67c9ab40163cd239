"""sysv only: the C fast path (shmfs/_hot_c/sysv.c). It follows the Python code's numbers and
protocols, writes the bytes the Python path writes, and sends each uncommon case the Python way.
(Every other sysv test runs on both paths already.)"""

from __future__ import annotations

import multiprocessing
import pickle
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import shmfs
from shmfs import frame, hotpath, locking
from shmfs.backends import SLOW
from shmfs.backends.sysv import chain_index, ipc, journal, layout

pytestmark = pytest.mark.skipif(not hotpath.available(), reason="the C module is not built")

HEADER = Path(__file__).parent.parent / "shmfs" / "_hot_c" / "sysv.h"


@pytest.fixture
def sysv_key(key: int) -> Iterator[int]:
    yield key
    for option in ("-M", "-S"):
        subprocess.run(["ipcrm", option, hex(key)], capture_output=True, check=False)


def _defines() -> dict[str, int]:
    text = HEADER.read_text(encoding="ascii")
    return {
        name: int(value.removesuffix("ULL"), 0)
        for name, value in re.findall(r"#define (\w+) (0x[0-9A-F]+ULL|\d+)", text)
    }


def test_the_c_numbers_are_the_python_ones() -> None:
    found = _defines()
    assert found["PHP_HEADER"] == layout.HEADER_SIZE
    assert found["PHP_CHUNK_HEADER"] == layout.CHUNK_HEADER_SIZE
    assert found["PHP_MIN_CHUNK"] == layout.chunk_size(0)
    assert found["J_MAGIC"] == journal._MAGIC
    assert found["J_BUFFER"] == journal._BUFFER
    assert found["J_CAPACITY"] == journal.CAPACITY
    assert found["J_DIRECT"] == journal._DIRECT
    assert found["STAMP_EDGE"] == journal._EDGE
    for name in ("SEED", "STATE", "A_END", "A_FREE", "A_NEED", "C_POS", "C_OLD", "C_END"):
        assert found[f"J_{name}"] == getattr(journal, f"_{name}"), name
    for name in ("C_FREE", "DONE", "SAVED", "IDLE", "APPEND", "CUT"):
        assert found[f"J_{name}"] == getattr(journal, f"_{name}"), name
    assert found["MAX_AVERAGE_CHUNK"] == chain_index._MAX_AVERAGE_CHUNK
    for name in ("BASE", "PER", "CAP"):
        assert found[f"MOVES_{name}"] == getattr(chain_index, f"_MOVES_{name}"), name


def _image(key: int) -> bytes:
    shmid = ipc.shmget(key, 0, 0)
    attachment = ipc.Attachment(shmid, ipc.shm_stat(shmid).size, readonly=True)
    try:
        return bytes(attachment.view)
    finally:
        attachment.detach()


OPS: list[tuple[int, Any]] = [
    (1, "one"),
    (2, [1, 2.5, None]),
    (3, "x" * 5000),  # a chunk bigger than the journal's buffer
    (1, "one, longer now"),
    (2, {"a": b"bytes"}),
    (-5, 7),
    (3, "y" * 300),
    (1, "z"),
]


def _run(key: int, *, c_path: bool, monkeypatch: pytest.MonkeyPatch) -> bytes:
    if not c_path:
        monkeypatch.setattr(hotpath, "_hot", None)
    seg = shmfs.attach(key, 1 << 15, backend="sysv", codec="pickle")
    try:
        assert (seg._backend.hot is not None) == c_path  # type: ignore[union-attr]
        for index, value in OPS:
            seg[index] = value
            assert seg[index] == value
        del seg[2]
        image = _image(key)
    finally:
        seg.destroy()
        monkeypatch.undo()
    return image


def test_both_paths_write_the_same_bytes(sysv_key: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """PHP's area and the journal alike, except the journal's seed and the stamps it keys."""
    ours = _run(sysv_key, c_path=True, monkeypatch=monkeypatch)
    theirs = _run(sysv_key, c_path=False, monkeypatch=monkeypatch)
    header = layout.read_header(memoryview(bytearray(ours)))

    def meaningful(image: bytes) -> list[bytes]:
        view = memoryview(bytearray(image))
        parts, pos = [image[:40]], 40
        while pos < header.end:
            length, step = layout.chunk_at(layout.word_view(view), header, pos)[1:]
            parts.append(image[pos : pos + 24 + length])
            parts.append(image[pos + 24 + length : pos + step - 8])  # padding, zeroed
            pos += step
        parts.append(image[header.end : header.total])  # zeroed
        return parts

    assert meaningful(ours) == meaningful(theirs)


def test_the_common_cases_are_one_c_call(sysv_key: int) -> None:
    seg = shmfs.attach(sysv_key, 1 << 15, backend="sysv")
    php = shmfs.attach(sysv_key + 1, 1 << 15, backend="sysv", codec="php")
    try:
        hot = seg._backend.hot  # type: ignore[union-attr]
        assert hot is not None
        seg[1] = "first"  # the first put walks (Python) and proves the index
        assert hot.put(1, 1, "replaced") is None
        assert hot.put(2, 1, {"new": [1, 2]}) is None
        assert hot.get(1) == "replaced" and hot.get(2) == {"new": [1, 2]}
        with seg.lock():  # re-entrant: the lock is this thread's
            assert hot.put(1, 1, 3.5) is None
            assert hot.get(1) == 3.5
        php[1] = "bare"
        php.get(1)
        assert php._backend.hot.get(1) == "bare"  # type: ignore[union-attr]
    finally:
        seg.destroy()
        php.destroy()
        subprocess.run(["ipcrm", "-M", hex(sysv_key + 1)], capture_output=True, check=False)
        subprocess.run(["ipcrm", "-S", hex(sysv_key + 1)], capture_output=True, check=False)


def _hold_lock(key: int, held: Any, done: Any) -> None:
    with shmfs.attach(key, backend="sysv") as seg, seg.lock():
        held.set()
        done.wait(30)


def test_the_uncommon_cases_go_the_python_way(sysv_key: int) -> None:
    seg = shmfs.attach(sysv_key, 1 << 15, backend="sysv", lock_timeout=0.2)
    try:
        backend: Any = seg._backend
        hot = backend.hot
        seg[1] = "v"
        seg.get(1)
        assert hot.get(99) is SLOW  # absent: Python proves it
        assert hot.put(1, 1, object()) is SLOW  # not a plain value
        assert hot.put(1, 1, "x" * (70 << 10)) is SLOW  # past 64 KiB
        assert hot.put(1, 1, "v", 0, b"\x80", False) is SLOW  # put_if_head: tmpfs's
        ctx = multiprocessing.get_context("spawn")
        held, done = ctx.Event(), ctx.Event()
        holder = ctx.Process(target=_hold_lock, args=(sysv_key, held, done))
        holder.start()
        try:
            assert held.wait(30)
            assert hot.get(1) is SLOW and hot.put(1, 1, "w") is SLOW  # Python waits
            with pytest.raises(shmfs.LockTimeout):
                seg[1] = "w"
        finally:
            done.set()
            holder.join(30)
        words = backend._words
        base = backend._journal.offset >> 3
        words[base + journal._STATE] = journal._APPEND  # a dead writer's change, as it looks
        words[base + journal._A_END] = words[2]
        words[base + journal._A_FREE] = words[3]
        words[base + journal._A_NEED] = 32
        assert hot.get(1) is SLOW  # Python recovers first
        assert seg[1] == "v" and hot.get(1) == "v"
        seg.detach()
        assert hot.get(1) is SLOW and hot.put(1, 1, "x") is SLOW  # closed stays closed
        seg = shmfs.attach(sysv_key, backend="sysv")
    finally:
        seg.destroy()


def test_a_get_and_a_put_at_depth_zero_take_the_semaphore_alone(sysv_key: int) -> None:
    """With no thread of this process inside the lock, a C get or put leaves the thread lock
    alone (it runs no Python code and keeps the GIL until it gives the semaphore back); a
    thread inside the lock still keeps it out, through the semaphore."""
    seg = shmfs.attach(sysv_key, 1 << 15, backend="sysv")
    try:
        backend: Any = seg._backend
        hot, lock = backend.hot, backend._lock
        seg[1] = "v"
        seg.get(1)
        thread_lock: Any = lock._thread_lock
        taken, done = threading.Event(), threading.Event()

        def hold(section: Any) -> None:
            with section:
                taken.set()
                done.wait(30)

        # Only the thread half, at depth 0: what acquire() holds before it takes the semaphore.
        holder = threading.Thread(target=hold, args=(thread_lock,))
        holder.start()
        try:
            assert taken.wait(30)
            assert hot.get(1) == "v"
            assert hot.put(1, 1, "w") is None and hot.get(1) == "w"
            assert lock._words[locking.DEPTH] == 0
        finally:
            done.set()
            holder.join(30)
        taken.clear()
        done.clear()
        holder = threading.Thread(target=hold, args=(seg.lock(),))  # the whole lock
        holder.start()
        try:
            assert taken.wait(30)
            assert hot.get(1) is SLOW and hot.put(1, 1, "x") is SLOW
        finally:
            done.set()
            holder.join(30)
        assert hot.get(1) == "w"
    finally:
        seg.destroy()


def test_the_move_log_is_renumbered_in_c_as_python_does(
    sysv_key: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the move log's length, the C put reads every offset afresh (ChainIndex._renumber),
    without calling back into Python; the index then holds each chunk's true offset, in tuples
    updated in place only where nothing else holds them."""
    seg = shmfs.attach(sysv_key, 1 << 16, backend="sysv", codec="pickle")
    try:
        backend: Any = seg._backend
        hot = backend.hot
        for index in range(11):
            seg[index] = f"value {index}"
        seg.get(0)
        where, moves, _ = backend._chain.hot_state()
        held = where[10]  # renumbered, never put: a tuple Python holds is not changed in place
        values = (held[0], held[1])
        calls: list[object] = []
        renumber = chain_index.ChainIndex._renumber
        monkeypatch.setattr(
            chain_index.ChainIndex, "_renumber", lambda self: calls.append(self) or renumber(self)
        )
        renumbered = False
        for round_no in range(3 * chain_index._max_moves(10)):
            index = round_no % 10
            assert hot.put(index, 1, f"value {index}, round {round_no}") is None
            renumbered = renumbered or not moves
        assert renumbered and not calls
        assert held == values
        view = memoryview(bytearray(_image(sysv_key)))
        header = layout.read_header(view)
        words, pos, offsets = layout.word_view(view), header.start, {}
        while pos < header.end:
            key, _, step = layout.chunk_at(words, header, pos)
            offsets[key] = pos
            pos += step
        for index, (remembered, seen) in where.items():
            at = remembered
            for removed_at, removed in moves[seen:]:
                at -= removed if at > removed_at else 0
            assert at == offsets[index]
        assert seg.get(7) == hot.get(7)
        assert all(seg[index].startswith(f"value {index}") for index in range(10))
    finally:
        seg.destroy()


SHORT_PICKLES: list[Any] = [
    "",
    "x" * 100,
    "é" * 127,  # 254 bytes of UTF-8
    "x" * 255,
    "x" * 256,  # past SHORT_BINUNICODE: pickle.dumps
    "\ud800 lone surrogate",  # pickle's 'surrogatepass': pickle.dumps
    "€ and 𝄞",
    b"",
    b"\x00\xff" * 100,
    b"x" * 256,
]


@pytest.mark.parametrize("value", SHORT_PICKLES, ids=lambda value: repr(value)[:16])
def test_short_strs_and_bytes_are_pickled_as_pickle_does(sysv_key: int, value: Any) -> None:
    """The C put writes a short str's or bytes' pickle itself: the very bytes of pickle.dumps."""
    seg = shmfs.attach(sysv_key, 1 << 15, backend="sysv", codec="pickle")
    try:
        backend: Any = seg._backend
        seg[1] = "first"  # walks and proves the index: the next put is C's
        assert backend.hot.put(1, 1, value) is None
        with seg.lock():
            stored = backend.read(1)
        assert stored[frame.HEADER.size :] == pickle.dumps(value, 5)
        assert seg[1] == value
    finally:
        seg.destroy()


def test_a_copy_that_cannot_be_resized_proves_nothing_after(sysv_key: int) -> None:
    """A put whose chain index copy cannot be resized (an export of it held) stores the value
    and raises; the copy then never proves an absence, so every read afterwards is right."""
    seg = shmfs.attach(sysv_key, 1 << 15, backend="sysv", codec="pickle")
    try:
        backend: Any = seg._backend
        for index in range(10):
            seg[index] = f"value {index}"
        seg.get(0)
        copy = backend._chain.hot_state()[2]
        assert copy
        with memoryview(copy), pytest.raises(BufferError):
            backend.hot.put(3, 1, "value 3, longer than it was")
        assert copy[:1] != b"P"  # not PHP's magic: equal to no segment
        assert seg.get(3) == "value 3, longer than it was"
        assert seg.get(42, None) is None
        seg[42] = "added"
        assert {index: seg[index] for index in (*range(10), 42)} == {
            **{index: f"value {index}" for index in range(10)},
            3: "value 3, longer than it was",
            42: "added",
        }
    finally:
        seg.destroy()
