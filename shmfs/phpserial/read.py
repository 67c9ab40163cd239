"""PHP's ``unserialize()``: :func:`loads`, stricter than PHP where PHP is lax (the format and
the refusals are drawn in :mod:`shmfs.phpserial`)."""

from __future__ import annotations

import contextlib
import re
from typing import Any, Final

from shmfs.errors import InvalidArgument, SerializationError
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

__all__ = ["loads", "payload_slots"]

# The float syntaxes unserialize accepts: iv | nv | nvexp in var_unserializer.re.
_FLOAT: Final = re.compile(rb"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?").fullmatch
_SPECIAL_FLOATS: Final = {b"NAN": float("nan"), b"INF": float("inf"), b"-INF": float("-inf")}
_SIGNS: Final = (b"+", b"-")
_TAGS: Final = frozenset(b.to_bytes() for b in b"NbidsaOCErR")


def loads(data: bytes | bytearray | memoryview, *, max_depth: int = MAX_DEPTH) -> Any:
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
            payload_slots(value.payload, slots, max_depth - len(stack), nesting)
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
            elif type(value) is str and value and value[0] <= "9" and NUMERIC_KEY(value):
                number = int(value)
                value = number if INT_MIN <= number <= INT_MAX else value
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
    if not CLASS_NAME(raw):
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
    if buf[pos] == 0x72 and not isinstance(value, OBJECTS):  # PHP refuses it too
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
    if not CLASS_NAME(enum) or not CASE_NAME(case):
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


def payload_slots(payload: bytes, slots: list[Any], max_depth: int, nesting: int) -> None:
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
    if not INT_MIN <= value <= INT_MAX:
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
