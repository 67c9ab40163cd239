"""The C get's reader of plain values' pickles (``shmfs/_hot_c/unpickle.c``): what it reads is
exactly what ``pickle.loads`` makes (types, values, shared objects); what it declines,
``pickle.loads`` reads; and no bytes at all, damaged or hostile, make it do anything else."""

from __future__ import annotations

import math
import pickle
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shmfs
from shmfs import hotpath
from shmfs.backends import SLOW

pytestmark = pytest.mark.skipif(not hotpath.available(), reason="the C module is not built")


def loads(data: bytes) -> Any:
    return hotpath._hot.plain_loads(data)


def shape(value: Any, path: tuple[int, ...] = ()) -> Any:
    """``value`` as nested (type, contents), NaN and -0.0 told apart, a container inside
    itself as how far up it is: equal shapes, equal values of equal types all the way down."""
    kind = type(value)
    if kind is float:
        return (kind, "nan" if math.isnan(value) else math.copysign(1.0, value) * abs(value))
    if kind not in (list, tuple, dict, set, frozenset):
        return (kind, value)
    if id(value) in path:
        return ("cycle", path[::-1].index(id(value)))
    path += (id(value),)
    if kind is dict:
        return (kind, [(shape(k, path), shape(v, path)) for k, v in value.items()])
    if kind in (set, frozenset):
        return (kind, sorted(repr(shape(item, path)) for item in value))
    return (kind, [shape(item, path) for item in value])


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.binary(max_size=300),
)
hashables = st.recursive(scalars, lambda inner: st.tuples(inner, inner), max_leaves=4)
plain_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=8),
        st.lists(inner, max_size=8).map(tuple),
        st.dictionaries(hashables, inner, max_size=6),
        st.sets(hashables, max_size=6),
        st.frozensets(hashables, max_size=6),
    ),
    max_leaves=30,
)


@given(plain_values)
@settings(max_examples=300, deadline=None)
def test_it_reads_what_pickle_reads(value: Any) -> None:
    data = pickle.dumps(value, 5)
    assert shape(loads(data)) == shape(pickle.loads(data))


@given(plain_values, st.sampled_from([4, 5]))
@settings(max_examples=100, deadline=None)
def test_protocol_four_too(value: Any, protocol: int) -> None:
    data = pickle.dumps(value, protocol)
    assert shape(loads(data)) == shape(pickle.loads(data))


def test_objects_shared_in_the_pickle_are_shared_in_the_value() -> None:
    text = "shared " * 3
    items = [1, 2]
    value = loads(pickle.dumps([text, text, items, (items,)], 5))
    assert value[0] is value[1] and value[2] is value[3][0]
    recursive: list[Any] = [1]
    recursive.append(recursive)
    again = loads(pickle.dumps(recursive, 5))
    assert again[1] is again


@pytest.mark.parametrize(
    "value",
    [2**64, -(2**70), 2**1000, 1j, range(3), object, shmfs.SegmentFull("x"), bytearray(b"x")],
)
def test_what_it_does_not_know_it_declines(value: Any) -> None:
    assert loads(pickle.dumps(value, 5)) is SLOW


def test_an_old_protocol_is_declined() -> None:
    for protocol in (0, 1):
        assert loads(pickle.dumps(("a", 1), protocol)) is SLOW


def test_damaged_and_hostile_bytes_are_declined_and_nothing_else() -> None:
    """Truncations, flipped bytes and random bytes: a value only where pickle.loads gives the
    same one; a decline otherwise; never a crash (AddressSanitizer runs this in CI)."""
    rng = random.Random(11)
    samples = [
        pickle.dumps(value, 5)
        for value in (
            ("suser:1", "v" * 40, None, 1.5),
            {"a": [1, 2, {3, 4}], (1, "b"): frozenset({b"x"})},
            [[[]], [(), ()], "é" * 200],
        )
    ]
    checked = 0
    for data in samples:
        variants = [data[:cut] for cut in range(len(data))]
        for _ in range(400):
            damaged = bytearray(data)
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
            variants.append(bytes(damaged))
        variants += [
            bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))) for _ in range(200)
        ]
        for variant in variants:
            got = loads(variant)
            if got is SLOW:
                continue
            assert shape(got) == shape(pickle.loads(variant))
            checked += 1
    assert checked > 0  # some damage leaves a valid pickle: those values match too


def test_it_needs_bytes() -> None:
    with pytest.raises(TypeError):
        loads(memoryview(b"N."))


def test_a_lone_str_of_every_length_and_high_byte_position_reads_as_pickle_reads() -> None:
    """A str alone is read without the reader (unpickle.c's lone_text), and a short ASCII one
    copied eight bytes at a time, each word checked for a byte over 0x7F as it is stored: at
    every length around the word and opcode boundaries, and with a non-ASCII char at every
    position, what it makes is pickle.loads's str."""
    for length in range(300):
        texts = ["a" * length] + ["a" * at + "é" + "a" * (length - at - 1) for at in range(length)]
        for text in texts:
            for protocol in (4, 5):  # (2 and 3 memoize by BINPUT: declined)
                data = pickle.dumps(text, protocol)
                got = loads(data)
                assert type(got) is str and got == text, (length, protocol)
        for at in range(length):  # one byte over 0x7F, alone: no UTF-8, so no str
            body = b"a" * at + b"\xff" + b"a" * (length - at - 1)
            op = b"\x8c" + bytes([length]) if length < 256 else b"X" + length.to_bytes(4, "little")
            assert loads(b"\x80\x05" + op + body + b"\x94.") is SLOW, (length, at)


def test_a_damaged_lone_str_is_declined_or_read_as_pickle_reads() -> None:
    rng = random.Random(12)
    for text in ("", "ab", "x" * 100, "y" * 300, "é" * 40, "\ud800" * 3):
        for protocol in (2, 4, 5):
            data = pickle.dumps(text, protocol)
            variants = [data[:cut] for cut in range(len(data))] + [data + b"."]
            for _ in range(200):
                damaged = bytearray(data)
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
                variants.append(bytes(damaged))
            for variant in variants:
                got = loads(variant)
                if got is not SLOW:
                    assert shape(got) == shape(pickle.loads(variant)), variant
