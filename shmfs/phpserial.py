"""PHP's ``serialize()`` / ``unserialize()`` format, byte for byte as PHP 8.2 writes it.

This is what PHP's ``shm_put_var`` stores, so Python and PHP can share variables:

* ``None`` ``N;``, ``bool`` ``b:1;``, ``int`` (signed 64-bit) ``i:-42;``, ``float`` ``d:0.1;``
  ``d:1;`` ``d:1.0E+25;`` ``d:NAN;`` (PHP's own digits and layout);
* ``str`` as its UTF-8 bytes and ``bytes``-like as they are: ``s:<byte length>:"...";``;
* ``list`` / ``tuple`` and ``dict`` (int, str or bytes keys): ``a:<n>:{<key><value>...}``, a str
  key PHP would store as an int (``"7"``, not ``"07"``) written as one, as PHP does;
* :class:`PHPObject` ``O:``, :class:`PHPEnum` ``E:``, :class:`PHPSerializable` ``C:``; an object met
  again is written as PHP's back-reference ``r:<slot>;``.

Decoding gives ``str`` for valid UTF-8 and ``bytes`` otherwise, and a ``list`` for an array keyed
exactly 0..n-1 in order, else a ``dict``. PHP's back-references (``r:n;`` the same object again,
``R:n;`` a PHP reference) decode to the very Python object of the slot they name; a PHP reference
is written back as a copy. Where ``unserialize()`` is laxer, :func:`loads` refuses: an int out of
64-bit range (PHP clamps it with a warning), a class or property name that is not UTF-8, the
``S:`` escaped-string format no PHP writes, and an object count with no digits.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from shmfs.errors import InvalidArgument, SerializationError

__all__ = ["PHPEnum", "PHPObject", "PHPSerializable", "dumps", "loads"]


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


_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**63 - 1
# The default of PHP's unserialize_max_depth (process_nested_array_data, var_unserializer.re):
# dumps() refuses what PHP could store but not read back.
_MAX_DEPTH: Final = 4096
# A string array key PHP stores as an int (ZEND_HANDLE_NUMERIC_STR, Zend/zend_hash.h): a canonical
# decimal, no "+", no leading zero, not "-0"; the 64-bit range is checked apart.
_NUMERIC_KEY: Final = re.compile(r"-?[1-9][0-9]{0,18}|0").fullmatch
# The float syntaxes unserialize accepts: iv | nv | nvexp in var_unserializer.re.
_FLOAT: Final = re.compile(rb"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?").fullmatch
_SPECIAL_FLOATS: Final = {b"NAN": float("nan"), b"INF": float("inf"), b"-INF": float("-inf")}
# zend_is_valid_class_name (Zend/zend_API.c) allows [0-9A-Za-z_\\\x80-\xff]; unserialize also
# refuses a leading "\\" (var_unserializer.re). An enum case must be an identifier to exist.
_CLASS_NAME: Final = re.compile(rb"[0-9A-Za-z_\x80-\xff][0-9A-Za-z_\\\x80-\xff]*").fullmatch
_CASE_NAME: Final = re.compile(rb"[A-Za-z_\x80-\xff][0-9A-Za-z_\x80-\xff]*").fullmatch
_SIGNS: Final = (b"+", b"-")
_ARRAYS: Final = frozenset((list, tuple, dict))
_OBJECTS: Final = (PHPObject, PHPEnum, PHPSerializable)
_ANY_OBJECT: Final = PHPObject("stdClass")
_TAGS: Final = frozenset(b.to_bytes() for b in b"NbidsaOCErR")


# Encoding -------------------------------------------------------------------------------------


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
        elif isinstance(item, _OBJECTS):
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
    if depth >= _MAX_DEPTH:  # PHP checks non-empty arrays only (process_nested_array_data)
        raise SerializationError(f"nested deeper than {_MAX_DEPTH}, which PHP cannot unserialize")
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
    if not _CLASS_NAME(name):
        raise SerializationError(f"invalid PHP class name {item.class_name!r}")
    if isinstance(item, PHPEnum):
        case = _utf8(item.case)
        if not _CASE_NAME(case):
            raise SerializationError(f"invalid PHP enum case name {item.case!r}")
        out.append(b'E:%d:"%b:%b";' % (len(name) + 1 + len(case), name, case))
        return None, slot
    if isinstance(item, PHPSerializable):
        payload = bytes(item.payload)
        out.append(b'C:%d:"%b":%d:{%b}' % (len(name), name, len(payload), payload))
        # The values in the payload take slots too (see _payload_slots). Only their number
        # matters here: any object stands in for the slots before.
        shadow.extend([_ANY_OBJECT] * (slot - len(shadow)))
        _payload_slots(payload, shadow, _MAX_DEPTH - depth, 0)
        return None, len(shadow)
    if depth >= _MAX_DEPTH:  # objects are checked even when empty (process_nested_object_data)
        raise SerializationError(f"nested deeper than {_MAX_DEPTH}, which PHP cannot unserialize")
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
    if not _INT_MIN <= value <= _INT_MAX:
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
    if key and key[0] <= "9" and _NUMERIC_KEY(key) and _INT_MIN <= int(key) <= _INT_MAX:
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


# Decoding -------------------------------------------------------------------------------------


def loads(data: bytes | bytearray | memoryview, *, max_depth: int = _MAX_DEPTH) -> Any:
    """Decode the first value PHP's ``serialize()`` wrote in ``data``; bytes after it are ignored.

    PHP equivalent: ``unserialize($data, ['max_depth' => $max_depth])``, except that no class is
    looked up or instantiated: objects come back as :class:`PHPObject`, :class:`PHPEnum` and
    :class:`PHPSerializable`. Safe on untrusted bytes: the work is linear in their length.

    Args:
        data: The serialized bytes.
        max_depth: The deepest nesting of arrays and objects accepted, as PHP's
            ``unserialize_max_depth`` (default 4096); 0 accepts any depth.

    Returns:
        The decoded value: strings as ``str`` when valid UTF-8 else ``bytes``, arrays keyed
        0..n-1 in order as ``list``, other arrays as ``dict``.

    Raises:
        SerializationError: ``data`` is truncated or malformed, holds an int outside signed 64
            bits, a class or property name that is not UTF-8, a back-reference to nothing, or
            is nested deeper than ``max_depth``.
        InvalidArgument: ``data`` is not bytes-like, or ``max_depth`` is negative.
    """
    if max_depth < 0:
        raise InvalidArgument(f"max_depth must be 0 (no limit) or more, not {max_depth}")
    try:
        buf = data if type(data) is bytes else memoryview(data).tobytes()
    except TypeError as exc:  # not even a buffer; bytes(data) would take an int as a size
        raise InvalidArgument(f"loads() takes bytes, not {type(data).__name__!r}") from exc
    try:
        return _parse(buf, max_depth or len(buf), [], 0)[0]
    except SerializationError:
        raise
    except (IndexError, ValueError) as exc:
        # Reading past the end (buf[pos]) or a number too long for int() lands here, rather
        # than being checked at every step of the hot loop.
        raise SerializationError(f"truncated or malformed PHP serialized data: {exc}") from exc


class _Frame:
    """An array or object being decoded."""

    __slots__ = ("box", "key", "left", "obj", "shared", "slot")

    def __init__(self, box: Any, obj: PHPObject | None, left: int) -> None:
        self.box = box  # an array's list while its keys run 0, 1, 2...; then a dict
        self.obj = obj
        self.left = left  # elements still to read
        self.slot = 0
        self.key: Any = None  # the key of the element being read
        self.shared = False  # an R: took this array before its end

    def to_dict(self, slots: list[Any]) -> dict[Any, Any]:
        """Turn the list into a dict: a key broke the run 0, 1, 2..."""
        self._check()
        box = self.box = slots[self.slot] = dict(enumerate(self.box))
        return box

    def finish(self, slots: list[Any]) -> Any:
        """Return the finished value: a list if the keys ended up 0..n-1 (duplicates do it)."""
        box = self.box
        if self.obj is not None:
            return self.obj
        if type(box) is dict and 0 in box and all(key == i for i, key in enumerate(box)):
            self._check()
            box = slots[self.slot] = list(box.values())
        return box

    def _check(self) -> None:
        """Refuse to change the type of an array that a PHP reference already holds."""
        if self.shared:
            raise SerializationError("PHP reference into an array not keyed 0..n-1, unsupported")


def _parse(  # noqa: PLR0912, PLR0915  # the hot loop: calls cost more than branches
    buf: bytes, max_depth: int, slots: list[Any], nesting: int
) -> tuple[Any, int]:
    """Decode the value at the start of ``buf``; return it and where it ends. See loads()."""
    # Every value but R: and keys takes the next slot in ``slots``, a container before its
    # elements (var_push in var_unserializer.re); r: and R: name slots from 1.
    stack: list[_Frame] = []
    building: dict[int, _Frame] = {}  # slot -> unfinished array, for R: into it
    frame: _Frame | None = None  # stack[-1]
    value: Any
    pos = 0
    while True:
        tag = buf[pos]
        if tag == 0x73:  # s:<len>:"<bytes>";
            raw, pos = _quoted(buf, pos, b'";')
            try:
                value = raw.decode()
            except UnicodeDecodeError:
                value = raw
        elif tag == 0x69:  # i:<int>;
            end = buf.find(b";", pos)
            if end < 0 or buf[pos + 1] != 0x3A:
                raise _fail(pos, "bad int")
            raw = buf[pos + 2 : end]
            # 18 digits cannot overflow: the common case needs no range check.
            value = int(raw) if end - pos < 21 and raw.isdigit() else _int(raw, pos)
            pos = end + 1
        elif frame is not None and frame.key is _KEY:
            raise _fail(pos, f"a key must be an int or a string, not {bytes([tag])!r}")
        elif tag in {0x4E, 0x62}:  # N; b:0; b:1;
            end = pos + (2 if tag == 0x4E else 4)
            value = _CONSTANTS.get(buf[pos:end], _fail)
            if value is _fail:
                raise _fail(pos, "bad null or bool")
            pos = end
        elif tag in {0x61, 0x4F}:  # a, O
            value, opened, pos = _open(buf, pos, len(stack) >= max_depth)
            if opened is not None:
                frame = opened
                frame.slot = len(slots)
                slots.append(value)
                if frame.obj is None:
                    building[frame.slot] = frame
                stack.append(frame)
                frame.key = _KEY
                continue
        elif tag in {0x72, 0x52}:  # r, R
            value, pos = _backref(buf, pos, slots, building)
        elif tag == 0x43:  # C
            value, pos = _read_serializable(buf, pos)
            slots.append(value)
            _payload_slots(value.payload, slots, max_depth - len(stack), nesting)
        elif tag == 0x64:  # d
            value, pos = _read_float(buf, pos)
        elif tag == 0x45:  # E
            value, pos = _read_enum(buf, pos)
        else:
            raise _fail(pos, f"unknown type tag {bytes([tag])!r}")
        if frame is None:
            return value, pos
        if frame.key is _KEY:  # that was a key; the value comes next
            if frame.obj is not None:  # property names stay as written: "7" is no int here
                if type(value) is bytes:
                    raise _fail(pos, f"property name {value[:80]!r} is not UTF-8")
            # A canonical decimal string key is an int key in a PHP array (ZEND_HANDLE_NUMERIC).
            elif type(value) is str and value and value[0] <= "9" and _NUMERIC_KEY(value):
                number = int(value)
                value = number if _INT_MIN <= number <= _INT_MAX else value
            frame.key = value
            continue
        if tag not in {0x52, 0x43}:  # R: takes no slot; C: took its own above
            slots.append(value)
        # Store the value in its container; close every container it completes.
        while True:
            box = frame.box
            if type(box) is dict:
                box[frame.key] = value
            elif frame.key == len(box):
                box.append(value)
            else:
                frame.to_dict(slots)[frame.key] = value
            frame.left -= 1
            if frame.left:
                frame.key = _KEY
                break
            if buf[pos] != 0x7D:
                raise _fail(pos, "expected '}'")
            pos += 1
            stack.pop()
            building.pop(frame.slot, None)
            value = frame.finish(slots)
            if not stack:
                return value, pos
            frame = stack[-1]


_KEY: Final = object()  # frame.key while the key itself is being read


def _open(buf: bytes, pos: int, too_deep: bool) -> tuple[Any, _Frame | None, int]:
    """Read the head of ``a:`` or ``O:``; return the value, its frame unless empty, the end."""
    obj = None
    if buf[pos] == 0x61:
        brace = buf.find(b":{", pos)
        digits = buf[pos + 2 : brace]
        if brace < 0 or buf[pos + 1] != 0x3A or not digits.isdigit():
            raise _fail(pos, "bad array size")
        count, pos = int(digits), brace + 2
    else:
        name, count, pos = _object_head(buf, pos)
        obj = PHPObject(name, {})
    # IS_FAKE_ELEM_COUNT (var_unserializer.re): every element takes two bytes or more, so a
    # huge count cannot make us loop or allocate beyond the input's size.
    if count < 0 or count > (len(buf) - pos) // 2:
        raise _fail(pos, f"{count} elements cannot fit in the data")
    if too_deep and (count or obj is not None):  # PHP checks no depth for an empty array
        raise SerializationError("PHP serialized data nested deeper than max_depth", offset=pos)
    value: Any = obj if obj is not None else []
    if count:
        return value, _Frame(obj.properties if obj is not None else value, obj, count), pos
    if buf[pos] != 0x7D:
        raise _fail(pos, "expected '}'")
    return value, None, pos + 1


def _object_head(buf: bytes, pos: int) -> tuple[str, int, int]:
    """Read ``O:<len>:"<class>":<count>:{`` (or ``C:``); return class, count and the end."""
    raw, pos = _quoted(buf, pos, b'":')
    brace = buf.find(b":{", pos)
    if brace < 0:
        raise _fail(pos, "bad count")
    if not _CLASS_NAME(raw):
        raise _fail(pos, f"invalid class name {raw[:80]!r}")
    return _name(raw, pos), _int(buf[pos:brace], pos), brace + 2


def _backref(
    buf: bytes, pos: int, slots: list[Any], building: dict[int, _Frame]
) -> tuple[Any, int]:
    """Read ``r:<slot>;`` or ``R:<slot>;``; return the value of that slot."""
    end = buf.find(b";", pos)
    digits = buf[pos + 2 : end]
    if end < 0 or buf[pos + 1] != 0x3A or not digits.isdigit():
        raise _fail(pos, "bad back-reference")
    index = int(digits) - 1  # an r: takes its own slot after this, so it never names itself
    if not 0 <= index < len(slots):
        raise _fail(pos, f"back-reference to slot {index + 1}, which does not exist")
    value = slots[index]
    if buf[pos] == 0x72 and not isinstance(value, _OBJECTS):  # PHP refuses it too
        raise _fail(pos, "r: names a value that is not an object")
    if index in building:
        building[index].shared = True
    return value, end + 1


def _read_float(buf: bytes, pos: int) -> tuple[float, int]:
    """Read ``d:<float>;`` in any syntax PHP accepts, NAN, INF and -INF included."""
    end = buf.find(b";", pos)
    token = buf[pos + 2 : end]
    if end < 0 or buf[pos + 1] != 0x3A:
        raise _fail(pos, "bad float")
    value = _SPECIAL_FLOATS.get(token)
    if value is None:
        if not _FLOAT(token):
            raise _fail(pos, f"bad float {token[:40]!r}")
        value = float(token)
    return value, end + 1


def _read_enum(buf: bytes, pos: int) -> tuple[PHPEnum, int]:
    """Read ``E:<len>:"<Enum>:<Case>";``."""
    raw, end = _quoted(buf, pos, b'";')
    enum, _, case = raw.partition(b":")
    if not _CLASS_NAME(enum) or not _CASE_NAME(case):
        raise _fail(pos, f"bad enum case {raw[:80]!r}")
    return PHPEnum(_name(enum, pos), case.decode()), end


def _read_serializable(buf: bytes, pos: int) -> tuple[PHPSerializable, int]:
    """Read ``C:<len>:"<class>":<len>:{<payload>}``."""
    name, size, start = _object_head(buf, pos)
    end = start + size
    # object_custom (var_unserializer.re): the payload and its closing brace must be there.
    if size < 0 or end >= len(buf) or buf[end] != 0x7D:
        raise _fail(pos, "bad Serializable payload length")
    return PHPSerializable(name, buf[start:end]), end + 1


_CONSTANTS: Final[dict[bytes, Any]] = {b"N;": None, b"b:0;": False, b"b:1;": True}
# Payloads inside payloads are followed this deep, then taken as opaque: no recursion bomb.
_MAX_NESTING: Final = 8


def _payload_slots(payload: bytes, slots: list[Any], max_depth: int, nesting: int) -> None:
    """Give the values of a C: payload their slots, when the payload is itself serialized data.

    A Serializable's unserialize() that calls unserialize() shares the outer slot table
    (object_custom passes its var_hash), and so does serialize() within serialize(): with the
    usual ``serialize($this->data)`` payload, the slots after a C: count its values too.
    """
    mark = len(slots)
    if nesting < _MAX_NESTING and payload[:1] in _TAGS:
        with contextlib.suppress(SerializationError, IndexError, ValueError):
            if _parse(payload, max_depth, slots, nesting + 1)[1] == len(payload):
                return
    del slots[mark:]  # opaque after all


def _quoted(buf: bytes, pos: int, after: bytes) -> tuple[bytes, int]:
    """Read ``X:<len>:"<bytes>`` and then ``after`` at ``pos``; return the bytes and the end."""
    colon = buf.find(b':"', pos)
    digits = buf[pos + 2 : colon]
    if colon < 0 or buf[pos + 1] != 0x3A or not digits.isdigit():
        raise _fail(pos, "bad length")
    start = colon + 2
    end = start + int(digits)
    if buf[end : end + 2] != after:
        raise _fail(pos, "length does not match the data")
    return buf[start:end], end + 2


def _int(token: bytes, pos: int) -> int:
    """Read a signed 64-bit decimal, as parse_iv2 (var_unserializer.re) accepts it."""
    if not (token.isdigit() or (token[:1] in _SIGNS and token[1:].isdigit())):
        raise _fail(pos, f"bad integer {token[:40]!r}")
    value = int(token)
    # PHP clamps an out-of-range int with a warning; the data is corrupt, so refuse it.
    if not _INT_MIN <= value <= _INT_MAX:
        raise _fail(pos, f"integer {token[:40]!r} does not fit in 64 bits")
    return value


def _name(raw: bytes, pos: int) -> str:
    """Decode a class name, which the documented forms hold as ``str``."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise _fail(pos, f"class name {raw[:80]!r} is not UTF-8") from None


def _fail(pos: int, what: str) -> SerializationError:
    """The error for malformed data at offset ``pos``."""
    return SerializationError(f"malformed PHP serialized data at offset {pos}: {what}", offset=pos)
