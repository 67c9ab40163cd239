"""Every public behaviour of a segment, on every backend, through the public API only."""

from __future__ import annotations

import os
import pickle
import socket
import threading
from typing import Any

import pytest

import shmfs
from tests.conftest import segment_ref
from tests.workers import attach_and_get, get_from_pickled

BAD_KEYS: list[tuple[Any, type[Exception]]] = [
    (0, shmfs.InvalidKey),
    (2**31, shmfs.InvalidKey),
    (-(2**31) - 1, shmfs.InvalidKey),
    (2**64, shmfs.InvalidKey),
    ("1", shmfs.InvalidKeyType),
    (1.5, shmfs.InvalidKeyType),
    (None, shmfs.InvalidKeyType),
    (True, shmfs.InvalidKeyType),
]
BAD_INDICES: list[tuple[Any, type[Exception]]] = [
    (2**63, shmfs.InvalidKey),
    (-(2**63) - 1, shmfs.InvalidKey),
    ("1", shmfs.InvalidKeyType),
    (1.5, shmfs.InvalidKeyType),
    (None, shmfs.InvalidKeyType),
    (True, shmfs.InvalidKeyType),
    (b"1", shmfs.InvalidKeyType),
]


# ------------------------------------------------------------------------- basic verbs


def test_put_get_has_remove(seg: shmfs.Segment) -> None:
    seg.put(1, "Hello.  This is the shared memory segment.")
    assert seg.get(1) == "Hello.  This is the shared memory segment."
    assert seg.has(1)
    assert not seg.has(2)
    seg.remove(1)
    assert not seg.has(1)
    with pytest.raises(shmfs.VariableNotFound) as info:
        seg.get(1)
    assert isinstance(info.value, KeyError)
    assert info.value.index == 1
    with pytest.raises(shmfs.VariableNotFound):
        seg.remove(1)
    assert seg.get(1, "fallback") == "fallback"
    assert seg.get(1, None) is None


def test_replace_keeps_latest(seg: shmfs.Segment) -> None:
    for value in ("short", "x" * 5000, [1, 2, 3], None, "y" * 200_000, 7):
        seg[3] = value
        assert seg[3] == value
    assert seg.stats()["variables"] == 1


def test_extreme_indices(seg: shmfs.Segment) -> None:
    for index in (0, -1, 2**63 - 1, -(2**63)):
        seg[index] = index
    assert list(seg) == [-(2**63), -1, 0, 2**63 - 1]
    assert all(seg[i] == i for i in seg)


def test_mapping_protocol(seg: shmfs.Segment) -> None:
    seg[5] = "five"
    seg[-2] = "minus two"
    seg[10] = "ten"
    assert list(seg) == [-2, 5, 10]
    assert len(seg) == 3
    assert 5 in seg and 6 not in seg
    assert dict(seg.items()) == {-2: "minus two", 5: "five", 10: "ten"}
    assert list(seg.values()) == ["minus two", "five", "ten"]
    del seg[5]
    assert 5 not in seg
    with pytest.raises(KeyError):
        del seg[5]
    assert seg.pop(10) == "ten"
    assert seg.pop(10, "gone") == "gone"
    assert seg.setdefault(7, "seven") == "seven"
    assert seg.setdefault(7, "other") == "seven"
    seg.update({1: "a", 2: "b"})
    seg.update([(3, "c")])
    assert seg[1] == "a" and seg[3] == "c"
    seg.clear()
    assert len(seg) == 0 and list(seg) == []


def test_values_of_every_kind(seg: shmfs.Segment) -> None:
    factor = 3

    def closure(x: int) -> int:
        return x * factor

    values: list[Any] = [
        None,
        True,
        0,
        -(2**100),
        1.5,
        float("inf"),
        "",
        "héllo ✓",
        b"\x00\xff" * 10,
        (1, "two", 3.0),
        {"nested": {"list": [1, [2, [3]]]}, 4: {5, 6}},
        bytearray(b"mutable"),
    ]
    for index, value in enumerate(values):
        seg[index] = value
    for index, value in enumerate(values):
        assert seg[index] == value
    seg[100] = lambda x: x + 1
    seg[101] = closure
    assert seg[100](1) == 2
    assert seg[101](2) == 6
    # Plain containers holding a function, at any depth the plain-pickle fast path looks at.
    seg[102] = {"key": [1, (2, {"f": closure})]}
    seg[103] = {1: "one", closure: "as a key"}
    assert seg[102]["key"][1][1]["f"](3) == 9
    assert [v for k, v in seg[103].items() if callable(k)] == ["as a key"]


def test_large_value(seg: shmfs.Segment, attach: Any, key: int) -> None:
    big = attach(key + 1, 16 << 20)
    value = os.urandom(4 << 20)
    big[1] = value
    assert big[1] == value
    big[1] = b"small now"
    assert big[1] == b"small now"
    assert big.stats()["used"] < 200


@pytest.mark.parametrize("codec", ["cloudpickle", "pickle", "json", "raw"])
def test_codecs_round_trip_and_cross_read(attach: Any, key: int, codec: str) -> None:
    writer = attach(key, 10000, codec=codec)
    reader = attach(key, codec="json")  # a reader decodes whatever the writer stored
    value: Any = b"raw bytes \x00" if codec == "raw" else {"k": [1, 2.5, "s", None, True]}
    writer[1] = value
    assert writer[1] == value
    assert reader[1] == value


def test_raw_codec_refuses_non_bytes(attach: Any, key: int) -> None:
    seg = attach(key, codec="raw")
    seg[1] = b"old"
    with pytest.raises(shmfs.SerializationError):
        seg[1] = "text"
    assert seg[1] == b"old"


def test_json_codec_refuses_what_json_cannot_hold(attach: Any, key: int) -> None:
    seg = attach(key, codec="json")
    with pytest.raises(shmfs.SerializationError) as info:
        seg[1] = {1, 2}
    assert isinstance(info.value, ValueError)
    assert 1 not in seg


def test_unknown_codec_and_backend(root: str, key: int) -> None:
    with pytest.raises(shmfs.InvalidArgument):
        shmfs.attach(key, root=root, codec="yaml")
    with pytest.raises(shmfs.InvalidArgument):
        shmfs.attach(key, root=root, backend="floppy")
    assert os.listdir(root) == []


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(socket.socket, id="socket"),
        pytest.param(threading.Lock, id="lock"),
        pytest.param(lambda: (i for i in range(3)), id="generator"),
        pytest.param(lambda: open(os.devnull), id="open-file"),  # noqa: SIM115
    ],
)
def test_unencodable_values_change_nothing(seg: shmfs.Segment, make: Any) -> None:
    seg[1] = "old"
    value = make()
    try:
        with pytest.raises(shmfs.SerializationError):
            seg[1] = value
        with pytest.raises(shmfs.SerializationError):
            seg[2] = [1, {"deep": value}]
    finally:
        if hasattr(value, "close"):
            value.close()
    assert seg[1] == "old"
    assert 2 not in seg


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("bad", "error"), BAD_KEYS)
def test_bad_keys_refused_before_anything_is_created(
    backend: str, root: str, bad: Any, error: type[Exception]
) -> None:
    with pytest.raises(error):
        shmfs.attach(bad, backend=backend, root=root)
    assert os.listdir(root) == []


@pytest.mark.parametrize(("bad", "error"), BAD_INDICES)
def test_bad_indices_refused(seg: shmfs.Segment, bad: Any, error: type[Exception]) -> None:
    for call in (
        lambda: seg.put(bad, 1),
        lambda: seg.get(bad),
        lambda: seg.has(bad),
        lambda: seg.remove(bad),
        lambda: seg.incr(bad),
        lambda: seg.add(bad, 1),
        lambda: seg.cas(bad, 1, 2),
    ):
        with pytest.raises(error):
            call()
    assert len(seg) == 0


def test_numpy_style_integer_indices_accepted(seg: shmfs.Segment) -> None:
    class Index:
        def __index__(self) -> int:
            return 42

    seg[Index()] = "via __index__"  # type: ignore[index]
    assert seg[42] == "via __index__"


@pytest.mark.parametrize(
    "options",
    [{"size": 0}, {"size": -1}, {"size": "10"}, {"perm": 0o1000}, {"lock_timeout": -1}],
)
def test_bad_options_refused(root: str, key: int, options: dict[str, Any]) -> None:
    with pytest.raises(shmfs.InvalidArgument) as info:
        shmfs.attach(key, root=root, **options)
    assert isinstance(info.value, ValueError)
    assert os.listdir(root) == []


# ------------------------------------------------------------------------- capacity


def test_segment_full_keeps_old_value(attach: Any, key: int) -> None:
    seg = attach(key, 1024)
    seg[1] = "x" * 500
    with pytest.raises(shmfs.SegmentFull) as info:
        seg[1] = "y" * 2000
    assert isinstance(info.value, MemoryError)
    assert "size=" in str(info.value)
    assert seg[1] == "x" * 500
    with pytest.raises(shmfs.SegmentFull):
        seg[2] = "z" * 600
    assert 2 not in seg
    seg[1] = "small"
    seg[2] = "z" * 600  # freed space is reusable
    assert seg.stats()["used"] <= 1024


def test_segment_full_says_how_many_bytes_the_value_needs(attach: Any, key: int) -> None:
    """``needed``: the bytes the value takes, as the segment counts them against its size, so
    a caller can tell "never fits" from "fits once room is made" without encoding it again."""
    seg = attach(key, 1024)
    with pytest.raises(shmfs.SegmentFull) as too_big:
        seg[1] = b"y" * 2000
    assert isinstance(too_big.value.needed, int)
    assert too_big.value.needed > max(2000, seg.size)
    assert pickle.loads(pickle.dumps(too_big.value)).needed == too_big.value.needed
    seg[1] = b"x" * 500
    with pytest.raises(shmfs.SegmentFull) as no_room:
        seg[2] = b"z" * 600
    needed = no_room.value.needed
    assert isinstance(needed, int)
    assert 600 < needed <= seg.size
    del seg[1]
    assert seg.stats()["free"] >= needed  # the room it asked for is the room it takes
    seg[2] = b"z" * 600


def test_existing_segment_keeps_its_size_and_perm(attach: Any, key: int) -> None:
    first = attach(key, 4096, 0o600)
    second = attach(key, 99999, 0o644)
    assert second.size == first.size == 4096
    assert second.perm == 0o600


def test_stats(seg: shmfs.Segment, key: int) -> None:
    seg[1] = "abc"
    stats = seg.stats()
    assert stats["key"] == key
    assert stats["backend"] == seg.backend
    assert stats["size"] == 1 << 20
    assert stats["variables"] == 1
    assert 0 < stats["used"] < 200
    assert stats["free"] == stats["size"] - stats["used"]
    assert stats["perm"] == 0o600
    assert stats["owner"] == os.geteuid()
    assert stats["location"]


def test_segments_lists_what_exists(attach: Any, backend: str, where: str, key: int) -> None:
    attach(key, 2048)[1] = "x"
    attach(key + 1, 4096)
    found = {info["key"]: info for info in shmfs.segments(backend=backend, root=where)}
    # A System V namespace is shared with every process on the machine: look at ours only.
    assert {key, key + 1} <= set(found)
    if backend != "sysv":
        assert set(found) == {key, key + 1}
    assert found[key]["variables"] == 1 and found[key + 1]["size"] == 4096


# ------------------------------------------------------------------------- atomic ops


def test_add(seg: shmfs.Segment) -> None:
    assert seg.add(1, "first")
    assert not seg.add(1, "second")
    assert seg[1] == "first"


def test_incr(seg: shmfs.Segment) -> None:
    assert seg.incr(1) == 1
    assert seg.incr(1, 10) == 11
    assert seg.incr(2, 0.5, default=1.0) == 1.5
    assert seg.incr(1, -11) == 0
    seg[3] = "text"
    with pytest.raises(TypeError):
        seg.incr(3)
    assert seg[3] == "text"


def test_cas(seg: shmfs.Segment) -> None:
    assert not seg.cas(1, None, "x")  # an empty index never matches
    assert 1 not in seg
    seg[1] = "a"
    assert not seg.cas(1, "b", "c")
    assert seg[1] == "a"
    assert seg.cas(1, "a", "c")
    assert seg[1] == "c"


def test_put_if_head_stores_only_over_its_head(seg: shmfs.Segment) -> None:
    """Whatever the backend, ``put_if_head`` never stores over a value of another shape nor
    into an empty index; where it says it stored, the value is there (it may decline)."""
    # A 4-tuple's protocol-5 pickle has at offset 11 MARK, its first item, MEMOIZE.
    head = b"(" + pickle.dumps("mine", 5)[11:-1]
    assert not seg.put_if_head(1, ("mine", 2, None, 0.0), 11, head)
    assert 1 not in seg
    seg[1] = ("other", 1, None, 0.0)
    assert not seg.put_if_head(1, ("mine", 2, None, 0.0), 11, head)
    assert seg[1] == ("other", 1, None, 0.0)
    seg[1] = ("mine", 1, None, 0.0)
    stored = seg.put_if_head(1, ("mine", 2, None, 0.0), 11, head)
    assert seg[1] == ("mine", 2 if stored else 1, None, 0.0)
    with pytest.raises(shmfs.InvalidKeyType):
        seg.put_if_head("1", "x", 11, head)  # type: ignore[arg-type]  # refused clearly
    seg.detach()
    with pytest.raises(shmfs.SegmentDetached):
        seg.put_if_head(1, "x", 11, head)


def test_get_fast_answers_the_value_or_slow(seg: shmfs.Segment) -> None:
    from shmfs.backends import SLOW  # noqa: PLC0415  # the fast path's documented answer

    seg[1] = ("small", 1)
    seg.get(1)
    seg.get(1)  # a tmpfs handle maps a variable on its second read
    assert seg.get_fast(1) in (("small", 1), SLOW)
    assert seg.get_fast(2) is SLOW  # absent
    assert seg.get_fast("1") is SLOW  # type: ignore[arg-type]  # anything odd is get's to say
    seg.detach()
    assert seg.get_fast(1) is SLOW


def test_update_read_modify_write(seg: shmfs.Segment) -> None:
    assert seg.update(1, lambda old: [*old, 1], default=[]) == [1]
    assert seg.update(1, lambda old: [*old, 2]) == [1, 2]
    with pytest.raises(shmfs.VariableNotFound):
        seg.update(2, lambda old: old)
    assert 2 not in seg


def test_lock_is_reentrant_for_the_holder(seg: shmfs.Segment) -> None:
    seg[1] = 1
    with seg.lock():
        seg.put(1, seg.get(1) + 1)
        with seg.lock(timeout=0):
            seg.incr(1)
    assert seg[1] == 3


def test_lock_excludes_other_threads(seg: shmfs.Segment) -> None:
    seg[1] = 0

    def work() -> None:
        for _ in range(200):
            with seg.lock():
                seg[1] = seg[1] + 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert seg[1] == 800


# ------------------------------------------------------------------------- lifecycle


def test_detach_is_idempotent_and_final(seg: shmfs.Segment) -> None:
    seg[1] = "kept"
    ref = segment_ref(seg)
    seg.detach()
    seg.detach()
    for call in (lambda: seg.get(1), lambda: seg.put(1, 2), lambda: len(seg), seg.stats):
        with pytest.raises(shmfs.SegmentDetached) as info:
            call()
        assert isinstance(info.value, ValueError)
    with shmfs.attach(ref["key"], backend=ref["backend"], root=ref["root"]) as again:
        assert again[1] == "kept"
    with pytest.raises(shmfs.SegmentDetached):
        again.get(1)


def test_destroy_is_seen_by_every_handle(attach: Any, key: int) -> None:
    first = attach(key, 4096)
    second = attach(key)
    first[1] = "secret"
    second.get(1)  # so the second handle has it open
    first.destroy()
    for call in (lambda: second.get(1), lambda: second.put(2, "x"), lambda: second.has(1)):
        with pytest.raises(shmfs.SegmentNotFound) as info:
            call()
        assert isinstance(info.value, LookupError)
    with pytest.raises(shmfs.SegmentNotFound):
        first.get(1)
    fresh = attach(key, 2048)
    assert len(fresh) == 0 and fresh.size == 2048


def test_pickled_segment_reattaches(seg: shmfs.Segment, spawn_ctx: Any) -> None:
    seg[1] = {"from": "parent"}
    copy = pickle.loads(pickle.dumps(seg))
    try:
        assert copy[1] == {"from": "parent"}
    finally:
        copy.detach()
    with spawn_ctx.Pool(1) as pool:
        assert pool.apply(get_from_pickled, (seg, 1)) == {"from": "parent"}
        assert pool.apply(attach_and_get, (segment_ref(seg), 1)) == {"from": "parent"}


def test_fork_child_uses_inherited_handle(seg: shmfs.Segment) -> None:
    seg[1] = 0
    with seg.lock():  # held by the parent across fork: the child must not inherit it
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 1
            try:
                try:
                    seg.lock(timeout=0.05).__enter__()
                except shmfs.LockTimeout:
                    code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "child got the parent's lock"
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            for _ in range(50):
                seg.incr(1)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert seg[1] == 50


def test_repr(seg: shmfs.Segment, key: int) -> None:
    assert str(key) in repr(seg)
