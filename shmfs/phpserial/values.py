"""The PHP values that have no Python type of their own, and the limits PHP sets on numbers,
names and nesting: what :mod:`shmfs.phpserial`'s writer and reader share."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "CASE_NAME",
    "CLASS_NAME",
    "INT_MAX",
    "INT_MIN",
    "MAX_DEPTH",
    "NUMERIC_KEY",
    "OBJECTS",
    "PHPEnum",
    "PHPObject",
    "PHPSerializable",
]


@dataclass
class PHPObject:
    """A PHP object (``O:``), such as a ``stdClass`` or an instance of a user class.

    Property names are kept exactly as PHP writes them: a protected one as ``"\\0*\\0name"``, a
    private one as ``"\\0Class\\0name"``. Integer names, written by classes whose
    ``__serialize()`` returns a list (``ArrayObject``...), stay ``int``, so re-encoding gives
    PHP's bytes back.
    """

    class_name: str
    properties: dict[str | int, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PHPEnum:
    """A PHP 8.1+ enum case (``E:``), such as ``PHPEnum("Suit", "Hearts")`` for ``Suit::Hearts``."""

    class_name: str
    case: str


@dataclass
class PHPSerializable:
    """An object of a class implementing PHP's ``Serializable`` (``C:``) and the bytes it wrote."""

    class_name: str
    payload: bytes


INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**63 - 1
# The default of PHP's unserialize_max_depth (process_nested_array_data, var_unserializer.re):
# dumps() refuses what PHP could store but not read back.
MAX_DEPTH: Final = 4096
# A string array key PHP stores as an int (ZEND_HANDLE_NUMERIC_STR, Zend/zend_hash.h): a canonical
# decimal, no "+", no leading zero, not "-0"; the 64-bit range is checked apart.
NUMERIC_KEY: Final = re.compile(r"-?[1-9][0-9]{0,18}|0").fullmatch
# zend_is_valid_class_name (Zend/zend_API.c) allows [0-9A-Za-z_\\\x80-\xff]; unserialize also
# refuses a leading "\\" (var_unserializer.re). An enum case must be an identifier to exist.
CLASS_NAME: Final = re.compile(rb"[0-9A-Za-z_\x80-\xff][0-9A-Za-z_\\\x80-\xff]*").fullmatch
CASE_NAME: Final = re.compile(rb"[A-Za-z_\x80-\xff][0-9A-Za-z_\x80-\xff]*").fullmatch
OBJECTS: Final = (PHPObject, PHPEnum, PHPSerializable)
