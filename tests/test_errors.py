"""The error hierarchy: builtin bases, attributes, pickling."""

from __future__ import annotations

import pickle

import pytest

import shmfs
from shmfs import errors

EXPECTED_BASES = {
    "InvalidArgument": ValueError,
    "InvalidKey": ValueError,
    "InvalidKeyType": TypeError,
    "VariableNotFound": KeyError,
    "SegmentNotFound": LookupError,
    "SegmentFull": MemoryError,
    "SerializationError": ValueError,
    "UnsafeSegment": PermissionError,
    "LockTimeout": TimeoutError,
    "SegmentDetached": ValueError,
    "WaitTimeout": TimeoutError,
}


@pytest.mark.parametrize("name", errors.__all__)
def test_every_error_is_a_shmfs_error_and_pickles(name: str) -> None:
    cls = getattr(shmfs, name)
    assert issubclass(cls, shmfs.ShmfsError)
    error = cls("something went wrong", key=5, index=-3)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert str(copy) == "something went wrong"
    assert (copy.key, copy.index) == (5, -3)


@pytest.mark.parametrize(("name", "base"), EXPECTED_BASES.items())
def test_builtin_bases(name: str, base: type[Exception]) -> None:
    assert issubclass(getattr(shmfs, name), base)


def test_invalid_key_type_is_also_invalid_key() -> None:
    assert issubclass(shmfs.InvalidKeyType, shmfs.InvalidKey)
    assert issubclass(shmfs.InvalidKey, shmfs.InvalidArgument)


def test_key_error_message_is_readable() -> None:
    assert str(shmfs.VariableNotFound("Variable key 3 doesn't exist")) == (
        "Variable key 3 doesn't exist"
    )
