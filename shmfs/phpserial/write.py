"""PHP's ``serialize()``: :func:`dumps`, byte for byte as PHP 8.2 writes (the format is drawn in
:mod:`shmfs.phpserial`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Final

from shmfs.errors import SerializationError
from shmfs.phpserial.read import payload_slots
from shmfs.phpserial.values import (
    CASE_NAME,
    CLASS_NAME,
    INT_MAX,
    INT_MIN,
    MAX_DEPTH,
    NUMERIC_KEY,
    OBJECTS,
    PHPEnum,
    PHPObject,
    PHPSerializable,
)

__all__ = ["dumps"]

_ARRAYS: Final = frozenset((list, tuple, dict))
_ANY_OBJECT: Final = PHPObject("stdClass")


def dumps(value: Any) -> bytes:
    """Serialize ``value`` exactly as PHP 8.2's ``serialize()`` would.

    PHP equivalent: ``serialize($value)``.

    Args:
        value: ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``-like, ``list``,
            ``tuple``, ``dict``, :class:`PHPObject`, :class:`PHPEnum` or
            :class:`PHPSerializable`, nested no deeper than PHP reads back (4096).

    Returns:
        The serialized bytes.

    Raises:
        SerializationError: A value of another type, an int outside signed 64 bits, a str that
            is not UTF-8 encodable, an invalid key or class name, a list or dict containing
            itself, or nesting deeper than 4096.
    """
    encode = _SCALARS.get(type(value))
    if encode is not None:  # the common case, first
        return encode(value)
    out: list[bytes] = []
    # Each value written takes the next slot, as in php_add_var_hash (ext/standard/var.c).
    objects: dict[Any, int] = {}  # object (or enum case, by value) -> its slot, for "r:"
    open_arrays: set[int] = set()  # ids of the lists and dicts being written, to refuse cycles
    # Iterative, not recursive: 4096 levels would overflow Python's stack.
    stack: list[tuple[Iterator[tuple[bytes, Any]], int]] = []
    shadow: list[Any] = []  # stand-in slots, to count those in C: payloads
    slot = 0
    item = value
    while True:
        slot += 1
        encode = _SCALARS.get(type(item))
        if encode is not None:
            out.append(encode(item))
        elif isinstance(item, OBJECTS):
            properties, slot = _write_object(
                item, out, objects, slot, depth=len(stack), shadow=shadow
            )
            if properties is not None:
                stack.append((properties, 0))
        elif type(item) not in _ARRAYS and (scalar := _scalar(item)) is not None:
            out.append(scalar)  # a subclass: an IntEnum, a str subclass...
        else:
            if id(item) in open_arrays:
                raise SerializationError(f"cannot serialize a {type(item).__name__} in itself")
            elements = _write_array(item, out, len(stack))
            if elements is not None:
                open_arrays.add(id(item))
                stack.append((elements, id(item)))
        while stack:
            pair = next(stack[-1][0], None)
            if pair is not None:
                out.append(pair[0])
                item = pair[1]
                break
            open_arrays.discard(stack.pop()[1])
            out.append(b"}")
        else:
            return b"".join(out)


def _scalar(value: Any) -> bytes | None:
    """Encode a value of a subclass of a scalar type, or return None."""
    for cls in type(value).__mro__:  # bool before int
        encode = _SCALARS.get(cls)
        if encode is not None:
            return encode(value)
    return None


def _write_array(item: Any, out: list[bytes], depth: int) -> Iterator[tuple[bytes, Any]] | None:
    """Write the head of a list or dict; return its (key bytes, value) pairs, None if empty."""
    if not isinstance(item, list | tuple | dict):
        raise SerializationError(
            f"cannot serialize {type(item).__name__!r} in PHP's format; supported: None, bool, "
            "int, float, str, bytes, list, tuple, dict, PHPObject, PHPEnum, PHPSerializable"
        )
    if not item:
        out.append(b"a:0:{}")
        return None
    if depth >= MAX_DEPTH:  # PHP checks non-empty arrays only (process_nested_array_data)
        raise SerializationError(f"nested deeper than {MAX_DEPTH}, which PHP cannot unserialize")
    out.append(b"a:%d:{" % len(item))
    if not isinstance(item, dict):
        return zip(map(b"i:%d;".__mod__, range(len(item))), item, strict=False)
    keys = [_array_key(key) for key in item]
    if len(set(keys)) != len(keys):
        raise SerializationError("dict keys collide as PHP array keys (such as 7 and '7')")
    return zip(keys, item.values(), strict=True)


def _write_object(
    item: PHPObject | PHPEnum | PHPSerializable,
    out: list[bytes],
    objects: dict[Any, int],
    slot: int,
    *,
    depth: int,
    shadow: list[Any],
) -> tuple[Iterator[tuple[bytes, Any]] | None, int]:
    """Write an object (a PHPObject's head only); return the properties to write and the slot."""
    ref = item if isinstance(item, PHPEnum) else id(item)  # PHP's enum cases are singletons
    if ref in objects:
        out.append(b"r:%d;" % objects[ref])
        return None, slot
    objects[ref] = slot
    name = _utf8(item.class_name)
    if not CLASS_NAME(name):
        raise SerializationError(f"invalid PHP class name {item.class_name!r}")
    if isinstance(item, PHPEnum):
        case = _utf8(item.case)
        if not CASE_NAME(case):
            raise SerializationError(f"invalid PHP enum case name {item.case!r}")
        out.append(b'E:%d:"%b:%b";' % (len(name) + 1 + len(case), name, case))
        return None, slot
    if isinstance(item, PHPSerializable):
        payload = bytes(item.payload)
        out.append(b'C:%d:"%b":%d:{%b}' % (len(name), name, len(payload), payload))
        # The values in the payload take slots too (see ``read.payload_slots``). Only their number
        # matters here: any object stands in for the slots before.
        shadow.extend([_ANY_OBJECT] * (slot - len(shadow)))
        payload_slots(payload, shadow, MAX_DEPTH - depth, 0)
        return None, len(shadow)
    if depth >= MAX_DEPTH:  # objects are checked even when empty (process_nested_object_data)
        raise SerializationError(f"nested deeper than {MAX_DEPTH}, which PHP cannot unserialize")
    out.append(b'O:%d:"%b":%d:{' % (len(name), name, len(item.properties)))
    # Names are written as they are: PHP turns "7" into 7 in arrays, not in objects.
    return iter([(_property_key(key), value) for key, value in item.properties.items()]), slot


def _float(value: float) -> bytes:
    """Format a float as PHP's serialize() does with serialize_precision=-1."""
    # smart_str_append_double (Zend/zend_smart_str.c) calls zend_gcvt with precision -1, i.e.
    # zend_dtoa mode 0: the shortest digits that round-trip, which repr() gives too (both are
    # David Gay's dtoa). zend_gcvt lays them out plain while decpt, the point's place (value =
    # 0.DIGITS * 10**decpt), is within -3..17, else as d.dddE+x; and no ".0" on integers.
    text = float.__repr__(value)
    if "e" not in text:  # repr is plain for decpt -3..16, and so is PHP
        if text[-2:] == ".0":
            return text[:-2].encode()
        if text[-1] in "nf":  # nan, inf, -inf; PHP drops a NaN's sign
            return b"NAN" if text[-1] == "n" else text.upper().encode()
        return text.encode()
    mantissa, _, exponent = text.partition("e")
    sign = "-" if mantissa[0] == "-" else ""
    digits = mantissa.lstrip("-").replace(".", "")
    power = int(exponent)  # decpt - 1
    if power == 16:  # repr switches to exponents at decpt 17, zend_gcvt only past it
        return (sign + digits.ljust(17, "0")).encode()
    return f"{sign}{digits[0]}.{digits[1:] or '0'}E{'-' if power < 0 else '+'}{abs(power)}".encode()


def _int64(value: int) -> int:
    """Return ``value`` if it fits PHP's signed 64-bit int."""
    if not INT_MIN <= value <= INT_MAX:
        raise SerializationError(f"int {value} does not fit PHP's signed 64-bit int")
    return value


def _utf8(text: str) -> bytes:
    """Encode ``text`` as UTF-8."""
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise SerializationError(f"str is not encodable as UTF-8: {exc}") from exc


def _str(value: str) -> bytes:
    """Encode a str as a PHP string of its UTF-8 bytes."""
    raw = _utf8(value)
    return b's:%d:"%b";' % (len(raw), raw)


def _bytes(raw: bytes) -> bytes:
    """Encode bytes as a PHP string."""
    return b's:%d:"%b";' % (len(raw), raw)


def _array_key(key: Any) -> bytes:
    """Encode a dict key as PHP's array would store it."""
    if isinstance(key, int):  # bool too: PHP casts true/false keys to 1/0
        return b"i:%d;" % _int64(int(key))
    if isinstance(key, str):
        raw = _utf8(key)
    elif isinstance(key, bytes):
        raw, key = key, key.decode("latin-1")  # str only for the ASCII test below
    else:
        raise SerializationError(
            f"PHP array keys are int, str or bytes, not {type(key).__name__!r}"
        )
    if key and key[0] <= "9" and NUMERIC_KEY(key) and INT_MIN <= int(key) <= INT_MAX:
        return b"i:%b;" % raw
    return _bytes(raw)


def _property_key(key: Any) -> bytes:
    """Encode a PHPObject property name."""
    if isinstance(key, int) and not isinstance(key, bool):
        return b"i:%d;" % _int64(key)
    if isinstance(key, str):
        return _str(key)
    raise SerializationError(f"PHP property names are str or int, not {type(key).__name__!r}")


_SCALARS: Final[dict[type, Callable[[Any], bytes]]] = {
    str: _str,
    int: lambda value: b"i:%d;" % _int64(value),
    float: lambda value: b"d:%b;" % _float(value),
    bool: lambda value: b"b:1;" if value else b"b:0;",
    type(None): lambda _: b"N;",
    bytes: _bytes,
    bytearray: _bytes,
    memoryview: lambda value: _bytes(value.tobytes()),
}
