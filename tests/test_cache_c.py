"""The cache's C steps: a key's slot (BLAKE2b in C, bit for bit hashlib's), the memo of slots
(``KeySlots``, the twin of ``keys.SlotMemo``), and a hit in one call (``CacheHits``), each
checked against the Python it replaces; and the hit's call kept whole when the value's own
unpickling closes the cache under it."""

from __future__ import annotations

import gc
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shmfs
from shmfs import hotpath
from shmfs.backends import SLOW
from shmfs.cache import entry as cache_entry
from shmfs.cache import keys as cache_keys

pytestmark = pytest.mark.skipif(not hotpath.available(), reason="the C module is not built")


def _hot() -> Any:
    return hotpath._hot


def python_slot(key: Any) -> tuple[str, int]:
    text = cache_keys.canonical(key)
    return text, cache_keys.key_index(text)


def _private_cache() -> Iterator[shmfs.Cache]:
    """A 1 MiB cache under a root of its own, closed and removed afterwards."""
    root = tempfile.mkdtemp(prefix="shmfs-test-", dir="/dev/shm")
    opened = shmfs.Cache(random.randrange(1, 2**31 - 1), size=1 << 20, root=root)
    try:
        yield opened
    finally:
        try:
            opened.close()
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def cache() -> Iterator[shmfs.Cache]:
    yield from _private_cache()


# --------------------------------------------------------------------------- key_slot


@pytest.mark.parametrize("length", [0, 1, 111, 127, 128, 129, 255, 256, 257, 1000])
def test_key_slot_is_blake2b_at_every_block_boundary(length: int) -> None:
    for key in ("x" * length, "é" * length, b"\xff\x00" * (length // 2), "🙂" * (length // 4)):
        assert _hot().key_slot(key) == python_slot(key), (length, type(key))


@given(st.one_of(st.text(), st.binary(), st.integers()))
@settings(max_examples=500, deadline=None)
def test_key_slot_is_the_python_slot(key: str | bytes | int) -> None:
    if isinstance(key, str) and any(0xD800 <= ord(char) <= 0xDFFF for char in key):
        assert _hot().key_slot(key) is None  # surrogatepass is Python's to do
    else:
        assert _hot().key_slot(key) == python_slot(key)


class Name(str):
    pass


@pytest.mark.parametrize("key", [(1, "a"), True, Name("a"), 1.0, None, "\udc80"])
def test_key_slot_leaves_the_rest_to_python(key: Any) -> None:
    assert _hot().key_slot(key) is None


def test_an_int_past_the_digit_limit_fails_as_in_python() -> None:
    with pytest.raises(ValueError, match="digits"):
        python_slot(10**5000)
    with pytest.raises(ValueError, match="digits"):
        _hot().key_slot(10**5000)


# --------------------------------------------------------------------------- the memo


def _twins(limit: int) -> tuple[Any, cache_keys.SlotMemo]:
    return _hot().KeySlots(cache_keys.slot, limit), cache_keys.SlotMemo(cache_keys.slot, limit)


def test_the_memo_is_its_python_twin_key_for_key() -> None:
    """Same answers and the same number of keys remembered after every step, through working
    sets that fit, that move, and that are too scattered to be worth storing (the rest)."""
    c_memo, py_memo = _twins(64)
    rng = random.Random(7)
    hot_keys = [f"hot:{n}" for n in range(40)]
    steps: list[Any] = []
    steps += [rng.choice(hot_keys) for _ in range(2000)]  # fits: mostly hits
    steps += [f"cold:{n}" for n in range(1000)]  # scattered: the memo rests
    steps += [rng.choice(hot_keys) + "'" for _ in range(2000)]  # a new working set
    steps += [rng.choice([7, b"7", "7", (7,), ("7", b"7"), Name("7")]) for _ in range(300)]
    for number, key in enumerate(steps):
        assert c_memo.slot(key) == py_memo.slot(key) == python_slot(key), number
        assert c_memo.size == py_memo.size, number
    c_memo.clear()
    py_memo.clear()
    assert c_memo.size == py_memo.size == 0


def test_a_memo_that_does_not_pay_stops_storing() -> None:
    c_memo, _ = _twins(100)
    for n in range(100):  # fills it with keys never asked for again
        c_memo.slot(n)
    for n in range(4 * 100):  # the rest: 4 x 100 misses stored nowhere, nothing emptied
        c_memo.slot(-1 - n)
        assert c_memo.size == 100
    assert c_memo.slot(0) == python_slot(0) and c_memo.size == 100  # still remembered
    c_memo.slot("next")
    assert c_memo.size == 1  # the rest is over: emptied, and this miss stored


def test_the_memo_does_not_take_true_for_1() -> None:
    """``True == 1`` and both hash alike, but a bool is no cache key: remembering 1 must not
    make True one."""
    c_memo, py_memo = _twins(16)
    for memo in (c_memo, py_memo):
        assert memo.slot(1) == python_slot(1) and memo.slot((1,)) == python_slot((1,))
        for refused in (True, (True,), 1.0):
            with pytest.raises(shmfs.InvalidKeyType):
                memo.slot(refused)


def test_a_failing_key_is_not_remembered() -> None:
    c_memo, _ = _twins(16)
    with pytest.raises(shmfs.InvalidKeyType):
        c_memo.slot(1.5)
    with pytest.raises(shmfs.InvalidKeyType):
        c_memo.slot([1])
    assert c_memo.size == 0


def test_the_cache_uses_them_unless_the_seam_is_in_use(
    cache: shmfs.Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(cache_keys.slot_memo(8), _hot().KeySlots)
    cache.set("a", 1)
    hits = cache.stats()["hits"]
    assert cache.get("a") == 1 and cache.stats()["hits"] == hits + 1
    monkeypatch.setattr(cache_keys, "key_index", lambda text: 1234)
    assert type(cache_keys.slot_memo(8)) is cache_keys.SlotMemo


# --------------------------------------------------------------------------- the hit


def _hits_of(cache: shmfs.Cache) -> Any:
    """The cache's C hit (``CacheHits.hit``), checking that its ``get`` is the C one."""
    hits = getattr(cache.get, "__self__", None)
    assert type(hits) is _hot().CacheHits
    return hits.hit


def test_a_hit_is_noted_exactly_as_python_notes_it(cache: shmfs.Cache) -> None:
    hit = _hits_of(cache)
    cache.set("k", {"v": 1}, ttl=60)
    cache._recency.flush(cache_entry.clock(), wait=True)
    counts, pending = list(cache._counts), dict(cache._pending)
    value = hit("k")
    assert value == {"v": 1}
    assert cache._counts == [counts[0] + 1, counts[1], counts[2]]
    slot = cache._slot("k")[1] & cache._mask
    assert set(cache._pending) == set(pending) | {slot} and cache._pending[slot] > 0


@pytest.mark.parametrize(
    "case", ["missing", "expired", "from the future", "merge due", "not a tuple", "other key"]
)
def test_everything_but_a_live_hit_is_left_to_python_untouched(
    cache: shmfs.Cache, now_moment: list[float], case: str
) -> None:
    hit = _hits_of(cache)
    cache.set("k", "v", ttl=10)
    cache._recency.due = now_moment[0] + 100
    index = cache._slot("k")[1]
    if case == "expired":
        now_moment[0] += 11
    elif case == "from the future":
        now_moment[0] -= 3600
    elif case == "merge due":
        cache._recency.due = now_moment[0] - 1
    elif case == "not a tuple":
        cache.segment.put(index, "just a str")
    elif case == "other key":
        cache.segment.put(index, ("not k", "v", None, now_moment[0]))
    counts, pending = list(cache._counts), dict(cache._pending)
    assert hit("missing" if case == "missing" else "k") is SLOW
    assert cache._counts == counts and cache._pending == pending


@pytest.fixture
def now_moment(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    moment = [1_700_000_000.0]
    monkeypatch.setattr(cache_entry, "clock", lambda: moment[0])  # the C hit looks it up too
    return moment


def test_a_hit_after_close_is_slow_and_get_says_detached(cache: shmfs.Cache) -> None:
    hit = _hits_of(cache)
    cache.set("k", "v")
    cache.close()
    assert hit("k") is SLOW
    with pytest.raises(shmfs.SegmentDetached):
        cache.get("k")


_VICTIM: list[tuple[shmfs.Cache, bool]] = []


def _drop_the_victim(value: str) -> str:
    """Unpickled inside the C hit: drops every reference the cache has to what the hit is
    using (and closes the cache, if asked)."""
    for cache, close in _VICTIM:
        if close:
            cache.close()
        for name in ("_counts", "_pending", "_recency", "get", "_slot"):
            setattr(cache, name, None)
    gc.collect()
    return value


class DropsOnLoad:
    def __init__(self, value: str) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_drop_the_victim, (self.value,))


@pytest.mark.parametrize("close", [False, True])
def test_a_value_whose_unpickling_drops_the_cache_cannot_pull_the_hit_from_under_it(
    cache: shmfs.Cache, close: bool
) -> None:
    hit = _hits_of(cache)
    cache.set("k", DropsOnLoad("v"))
    cache._recency.due = cache_entry.clock() + 3600  # no merge due, however slow gc is
    _VICTIM.append((cache, close))
    try:
        answer = hit("k")  # under AddressSanitizer (.ci/sanitize), a use after free fails here
    finally:
        _VICTIM.clear()
    # Closed mid-read, the C get either finished the read it had begun or leaves the get to
    # Python (which then says detached); either way nothing was freed under it.
    assert answer == "v" or (close and answer is SLOW)
    del hit
    cache.segment.detach()
    cache._segment = None  # close() has nothing left to share the counts with
    gc.collect()


def test_the_c_get_is_cache_get_in_every_way_of_calling_it(cache: shmfs.Cache) -> None:
    _hits_of(cache)
    cache.set("k", "v")
    assert cache.get("k") == "v" and cache.get("k", 5) == "v"
    assert cache.get("nope") is None and cache.get("nope", 5) == 5
    assert cache.get("nope", default=6) == 6 and cache.get(key="k") == "v"
    with pytest.raises(TypeError):
        cache.get()
    with pytest.raises(TypeError):
        cache.get("k", 1, 2)
    with pytest.raises(shmfs.InvalidKeyType):
        cache.get(1.5)
    assert cache["k"] == "v" and "k" in cache
    with pytest.raises(KeyError):
        cache["nope"]


class Counting(shmfs.Cache):
    gets = 0

    def get(self, key: Any, default: Any = None) -> Any:
        Counting.gets += 1
        return super().get(key, default)


def test_a_subclass_get_is_not_bypassed() -> None:
    root = tempfile.mkdtemp(prefix="shmfs-test-", dir="/dev/shm")
    try:
        with Counting(random.randrange(1, 2**31 - 1), size=1 << 20, root=root) as counting:
            counting.set("k", "v")
            assert counting.get("k") == "v" and counting["k"] == "v" and Counting.gets == 2
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- the set


def _sets_of(cache: shmfs.Cache) -> Any:
    """The cache's C set (``CacheSets.store``), checking that its ``set`` is the C one."""
    sets = getattr(cache.set, "__self__", None)
    assert type(sets) is _hot().CacheSets
    return sets.store


def _raw(cache: shmfs.Cache, key: Any) -> bytes | None:
    """The stored frame of ``key``'s variable, byte for byte (``None``: nothing stored)."""
    index = cache._slot(key)[1]
    if index not in cache.segment:
        return None
    return bytes(cache.segment._backend._read_locked(index))


def _state(cache: shmfs.Cache, keys: list[Any]) -> tuple[Any, ...]:
    """What a set may change: the stored bytes, the LRU notes, the counts, the merge's due."""
    return (
        [_raw(cache, key) for key in keys],
        dict(cache._pending),
        list(cache._counts),
        cache._recency.due,
    )


@pytest.fixture
def twin() -> Iterator[shmfs.Cache]:
    """A second cache, for the Python set to write what the C set writes in the first."""
    yield from _private_cache()


@given(st.text(max_size=300) | st.text(alphabet="é🙂x", min_size=60, max_size=140))
@settings(max_examples=300, deadline=None)
def test_the_c_head_is_pickling_tuple_head(text: str) -> None:
    from shmfs import pickling  # noqa: PLC0415  # only this test compares with it

    made = hotpath.tuple_head(text)
    if any(0xD800 <= ord(char) <= 0xDFFF for char in text):
        assert made is None  # surrogatepass is Python's to do
    else:
        assert made == pickling.tuple_head(text)


@pytest.mark.parametrize("length", [0, 1, 254, 255, 256, 257, 70_000])
def test_the_c_head_at_the_opcode_boundaries(length: int) -> None:
    from shmfs import pickling  # noqa: PLC0415  # only this test compares with it

    made = hotpath.tuple_head("x" * length)
    assert made == (None if length > 60_000 else pickling.tuple_head("x" * length))


VALUES: list[Any] = [
    1,
    "v",
    {"user": 42, "name": "alice", "roles": ["admin", "dev"]},
    [1.5, None, True, b"\x00" * 300],
    "x" * 3000,  # a bigger slot class
    "y" * 20_000,  # a variable with a file of its own
]


@pytest.mark.parametrize("ttl", [None, 30.0])
def test_a_c_set_stores_and_notes_exactly_what_the_python_set_does(
    cache: shmfs.Cache, twin: shmfs.Cache, now_moment: list[float], ttl: float | None
) -> None:
    """Key for key and step for step (new entries, replaced ones, each value's slot class and a
    file of its own), the C set leaves the bytes, LRU notes and counts the Python set leaves."""
    store = _sets_of(cache)
    cache.ttl = twin.ttl = ttl
    for cache_ in (cache, twin):
        cache_._recency.due = now_moment[0] + 3600  # no merge due in either
    keys: list[Any] = ["k", 7, b"b", "é" * 300]
    fast = 0
    for step, value in enumerate(VALUES * 3):
        key = keys[step % len(keys)]
        now_moment[0] += 0.25
        before = _state(cache, keys)
        if store(key, value) is SLOW:  # a slab file to add, a variable's own file: Python's
            assert _state(cache, keys) == before, step
            cache.set(key, value)
        else:
            fast += 1
        shmfs.Cache.set(twin, key, value)  # the Python set
        assert _state(cache, keys) == _state(twin, keys), step
        assert cache.peek(key) == value
    assert fast >= len(VALUES)  # a third of them in C at least (8 today)
    cache._recency.due = twin._recency.due = now_moment[0] - 1  # a merge due: both merge
    assert store("k", "last") is None
    shmfs.Cache.set(twin, "k", "last")
    # Both merged their notes (the next merge's time depends on how long this one took).
    assert cache._recency.due > now_moment[0] and twin._recency.due > now_moment[0]
    assert cache._pending == twin._pending == {}
    assert _state(cache, keys)[:3] == _state(twin, keys)[:3]


def _watching(cache: shmfs.Cache) -> Any:
    return cache.watch("k", timeout=0.01)


@pytest.mark.parametrize(
    "case",
    [
        "other key",
        "a bucket",
        "a stranger's value",
        "not plain",
        "too big",
        "surrogate key",
        "int clock",
        "int ttl",
        "watched",
        "lock held elsewhere",
        "detached",
    ],
)
def test_everything_but_the_common_set_is_left_to_python_untouched(
    cache: shmfs.Cache, now_moment: list[float], case: str
) -> None:
    store = _sets_of(cache)
    key, value = "k", {"v": 1}
    cache.set(key, "before")
    index = cache._slot(key)[1]
    held: Any = None
    if case == "other key":
        cache.segment.put(index, ("not k", "v", None, now_moment[0]))
    elif case == "a bucket":
        cache.segment.put(index, {"sk": ("v", None, now_moment[0]), "so": (1, None, 0.0)})
    elif case == "a stranger's value":
        cache.segment.put(index, "just a str")
    elif case == "not plain":
        value = Name("a str subclass")
    elif case == "too big":
        value = "z" * 70_000
    elif case == "surrogate key":
        key = "\udc80"
    elif case == "int clock":
        now_moment[0] = 1_700_000_000  # an int: the C set leaves other clocks to Python
    elif case == "int ttl":
        cache.ttl = 60  # check_ttl makes floats; set by hand, the Python set judges it
    before = _state(cache, [key, "k"])
    if case == "detached":
        cache.close()
        assert store(key, value) is SLOW
        with pytest.raises(shmfs.SegmentDetached):
            cache.set(key, value)
        return
    other = None
    if case == "watched":
        held = _watching(cache)
    elif case == "lock held elsewhere":
        root = os.path.dirname(cache.segment.stats()["location"])
        other = shmfs.attach(cache.segment.key, root=root)  # its own flock: another holder
        held = other.lock()
        held.__enter__()
    try:
        assert store(key, value) is SLOW
    finally:
        if case == "watched":
            held.close()
        elif other is not None:
            held.__exit__(None, None, None)
            other.detach()
    assert _state(cache, [key, "k"]) == before
    cache.set(key, value)  # the Python set does it
    assert cache.get(key) == value


def test_the_c_set_is_cache_set_in_every_way_of_calling_it(cache: shmfs.Cache) -> None:
    _sets_of(cache)
    cache.set("a", 1)
    cache.set("b", 2, None)
    cache.set("c", 3, 60)
    cache.set(key="d", value=4)
    cache.set("e", 5, ttl=60)
    cache["f"] = 6
    assert [cache.get(key) for key in "abcdef"] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(TypeError):
        cache.set("a")
    with pytest.raises(TypeError):
        cache.set("a", 1, 2, 3)
    with pytest.raises(shmfs.InvalidKeyType):
        cache.set(1.5, 1)
    with pytest.raises(shmfs.InvalidArgument):
        cache.set("a", 1, -1)
    with pytest.raises(shmfs.SerializationError):
        cache.set("a", _Unpicklable())
    assert cache.get("a") == 1


class _Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("no")


class CountingSets(shmfs.Cache):
    sets = 0

    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        CountingSets.sets += 1
        super().set(key, value, ttl)


def test_a_subclass_set_is_not_bypassed() -> None:
    root = tempfile.mkdtemp(prefix="shmfs-test-", dir="/dev/shm")
    try:
        with CountingSets(random.randrange(1, 2**31 - 1), size=1 << 20, root=root) as counting:
            counting.set("k", "v")
            counting["j"] = "w"
            assert counting.get("k") == "v" and CountingSets.sets == 2
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_clock_that_drops_the_cache_cannot_pull_the_set_from_under_it(
    cache: shmfs.Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clock runs inside the C set: one that closes the cache and drops every reference it
    has to what the set is using leaves it either stored or refused, never a freed object
    used (under AddressSanitizer, .ci/sanitize, a use after free fails here)."""
    store = _sets_of(cache)
    cache.set("k", "v")

    def dropping() -> float:
        monkeypatch.setattr(cache_entry, "clock", lambda: 1_700_000_000.0)
        cache.close()
        for name in ("_pending", "_recency", "set", "_slot", "_writes"):
            setattr(cache, name, None)
        gc.collect()
        return 1_700_000_000.0

    monkeypatch.setattr(cache_entry, "clock", dropping)
    assert store("k", "w") is SLOW  # the handle was closed: the put stores nothing
    del store
    cache._segment = None
    gc.collect()
