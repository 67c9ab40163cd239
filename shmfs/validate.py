"""Checking what callers pass in, before anything is touched: keys, indices and options."""

from __future__ import annotations

import operator
import os
from collections.abc import Iterable
from typing import Any, Final

from shmfs.errors import InvalidArgument, InvalidKey, InvalidKeyType

__all__ = ["check_index", "check_key", "check_options", "trusted_uids"]

_INDEX_MIN: Final = -(1 << 63)
_INDEX_MAX: Final = (1 << 63) - 1
_KEY_MIN: Final = -(1 << 31)
_KEY_MAX: Final = (1 << 31) - 1


def _as_int(value: object, what: str) -> int:
    """``value`` as an int, or ``InvalidKeyType``; bools are refused, numpy ints accepted."""
    if isinstance(value, bool):
        raise InvalidKeyType(f"{what} must be an int, not bool ({value!r})")
    try:
        return operator.index(value)  # type: ignore[arg-type]  # TypeError is the check
    except TypeError:
        raise InvalidKeyType(f"{what} must be an int, not {type(value).__name__}") from None


def check_key(key: object) -> int:
    """Validate a segment key: a System V ``key_t``, signed 32-bit and non-zero.

    Raises:
        InvalidKeyType: ``key`` is not an int.
        InvalidKey: ``key`` is 0 (``IPC_PRIVATE``) or outside 32 bits.
    """
    number = _as_int(key, "segment key")
    if number == 0:
        raise InvalidKey("segment key 0 is IPC_PRIVATE and names no shared segment", key=0)
    if not _KEY_MIN <= number <= _KEY_MAX:
        raise InvalidKey(
            f"segment key {number} is out of range: keys are signed 32-bit (System V key_t)",
            key=number,
        )
    return number


def check_index(index: object) -> int:
    """Validate a variable index: a signed 64-bit int.

    Raises:
        InvalidKeyType: ``index`` is not an int.
        InvalidKey: ``index`` is outside 64 bits.
    """
    if type(index) is int and _INDEX_MIN <= index <= _INDEX_MAX:
        return index
    number = _as_int(index, "variable index")
    if not _INDEX_MIN <= number <= _INDEX_MAX:
        raise InvalidKey(f"variable index {number} is out of range: signed 64-bit", index=number)
    return number


def check_options(size: Any, perm: Any, lock_timeout: Any) -> tuple[int, int]:
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise InvalidArgument(f"size must be a positive int, not {size!r}")
    if isinstance(perm, bool) or not isinstance(perm, int) or not 0 <= perm <= 0o777:
        raise InvalidArgument(f"perm must be an int from 0 to 0o777, not {perm!r}")
    if lock_timeout is not None and (
        isinstance(lock_timeout, bool)
        or not isinstance(lock_timeout, int | float)
        or lock_timeout < 0
    ):
        raise InvalidArgument(f"lock_timeout must be None or >= 0 seconds, not {lock_timeout!r}")
    return size, perm


def trusted_uids(trust_uids: Iterable[int] | None) -> frozenset[int]:
    uids = {os.geteuid(), 0}
    for uid in trust_uids or ():
        uids.add(_as_int(uid, "trust_uids entry"))
    return frozenset(uids)
