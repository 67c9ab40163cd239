"""Integer frames read and written inside a script, so an ``incr`` is one call with no read.

A counter's frame (:mod:`shmfs.frame`: a 24-byte header with a CRC-32, then the payload) is
rebuilt on the server byte for byte as Python writes it, for the codecs whose integers have
one plain form: a pickle (``cloudpickle``, ``pickle``: opcodes ``K``, ``M``, ``J`` or
``LONG1``, with the ``FRAME`` opcode Python adds past 4 bytes) and ``json`` (decimal digits).
The old frame is accepted only if re-encoding the integer read from it gives back exactly its
bytes, checksum included: anything else (another type, a signed or damaged frame, a pickle
written in another form, a pickle while pickles from this server are not trusted) is left to
the client's general path, which decodes it and raises what it always raised.

Lua numbers are doubles, so only integers below ``LIMIT`` in magnitude are taken: their sums
stay exact.

A script keeps nothing between calls: every table and function it makes is made again on each
call, and each call of a C function (``string.byte``, ``bit.bxor``) costs the server about as
much as a dozen arithmetic steps. So the checksum takes as few calls as it can: CRC-32
is linear, so a frame's checksum is that of the same frame with zero bytes for the integer's,
a constant of its form, corrected by each of the integer's bytes by an amount that depends
only on the byte and its distance from the frame's end. Those amounts are in one string
constant (the server compiles a script's constants once), read four bytes at a time: an
integer's checksum costs a lookup per byte and one ``bxor``. The old frame is checked by
building the frame of the integer read from it and comparing the two, and each codec has a
script of its own, holding only its forms.
"""

from __future__ import annotations

import struct
import zlib
from typing import Final

__all__ = ["CODECS", "LIMIT", "library"]

#: Integers the script adds: ``-LIMIT < n < LIMIT`` for the old value, ``delta`` and the result.
LIMIT: Final = 2**52
#: The ids (:data:`shmfs.codecs.CODECS`) of the codecs whose integers a script reads and writes.
CODECS: Final = frozenset({1, 2, 3})
_JSON: Final = 3
_JSON_DIGITS: Final = 17  # "-" and 16 digits: more than LIMIT needs
_HEAD: Final = struct.Struct("<4sBBBBQ")


def _head(codec: int, length: int) -> bytes:
    return _HEAD.pack(b"\x93SHF", 1, codec, 0, 0, length)


def _pickle_prefix(shape: int) -> bytes:
    """The payload before the integer's bytes: shape 0 ``K``, 1 ``M``, 2 ``J``, n>=5 LONG1."""
    if shape == 0:
        return b"\x80\x05K"
    body = {1: b"M", 2: b"J"}.get(shape, b"\x8a" + bytes([shape]))
    size = {1: 2, 2: 4}.get(shape, shape)
    return b"\x80\x05\x95" + struct.pack("<Q", len(body) + size + 1) + body


def _pickle_size(shape: int) -> int:
    return {0: 1, 1: 2, 2: 4}.get(shape, shape)


def _signed32(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def _lua_bytes(data: bytes) -> str:
    return "'" + "".join(f"\\{byte}" for byte in data) + "'"


def _effect(distance: int, value: int) -> int:
    """What the byte ``value`` adds (by xor) to the CRC-32 of any message in which it stands
    ``distance`` bytes before the end, against a zero byte there."""
    return zlib.crc32(bytes([value]) + bytes(distance)) ^ zlib.crc32(bytes(distance + 1))


def _entries(values: list[int]) -> str:
    """Checksums as a Lua string of 4 bytes each, little-endian, read by ``entry(i)``."""
    return _lua_bytes(b"".join(struct.pack("<I", value) for value in values))


# A pickle's integer takes at most 7 bytes below LIMIT (LONG1 of 5, 6 or 7 bytes).
_MOST_BYTES: Final = 7
# The pickle forms' shapes (see _pickle_prefix) and the integers each takes.
_PICKLE_FORMS: Final = (
    (0, "v >= 0 and v < 256"),
    (1, "v >= 0 and v < 65536"),
    (2, "v >= -2147483648 and v < 2147483648"),
    (5, "v >= -549755813888 and v < 549755813888"),
    (6, "v >= -140737488355328 and v < 140737488355328"),
    (7, "true"),
)


def _pickle_form(codec: int, shape: int) -> str:
    """Lua returning the frame of v (``v`` in the form's range) in the form of ``shape``."""
    size = _pickle_size(shape)
    prefix = _pickle_prefix(shape)
    head = _head(codec, len(prefix) + size + 1)
    # The checksum with zero bytes for the integer's, which each byte's effect then corrects.
    zeros = zlib.crc32(head + prefix + bytes(size) + b".")
    names = [f"b{j}" for j in range(1, size + 1)]
    lines = []
    if shape not in (0, 1):
        # A negative v in two's complement, as the complement of -v - 1: v + 2^(8n) is not exact.
        lines.append("local s, o = 1, 0")
        lines.append("if v < 0 then v, s, o = -v - 1, -1, 255 end")
    for j, name in enumerate(names):
        last = j == size - 1
        lines.append(f"local {name} = v % 256" + ("" if last else f"; v = (v - {name}) / 256"))
    if shape not in (0, 1):
        lines.append(", ".join(names) + " = " + ", ".join(f"o + s * {n}" for n in names))
    effects = ", ".join(f"entry({(size - j - 1) * 256} + {name})" for j, name in enumerate(names))
    lines.append(
        f"return frame({_lua_bytes(head)}, bxor({_signed32(zeros)}, {effects}),"
        f" {_lua_bytes(bytes(4) + prefix)} .. char({', '.join(names)}, 46))"
    )
    return "\n    ".join(lines)


def _pickle_lua(codec: int) -> str:
    """``encode`` and ``decode`` for a pickle codec: each form a branch of its own constants."""
    table = [_effect(d, b) for d in range(1, _MOST_BYTES + 1) for b in range(256)]
    branches = "\n  ".join(
        f"{'if' if k == 0 else 'else' if test == 'true' else 'elseif'}"
        f"{'' if test == 'true' else ' ' + test + ' then'}\n    {_pickle_form(codec, shape)}"
        for k, (shape, test) in enumerate(_PICKLE_FORMS)
    )
    return f"""
-- What a byte adds to the checksum, by its distance from the frame's end (1 to 7) and value.
local EFFECTS = {_entries(table)}
local function entry(i)
  local a, b, c, d = byte(EFFECTS, 4 * i + 1, 4 * i + 4)
  return a + 256 * b + 65536 * c + 16777216 * d
end
-- The frame Python writes for the integer v (its shortest pickle form), or nil past LIMIT.
local function encode(v)
  if not (v > -LIMIT and v < LIMIT) then return nil end
  {branches}
  end
end
-- The integer a frame holds if it is exactly the frame encode() writes for it (so no other
-- codec's, no damaged one), else nil; nil too unless ``pickles``. The integer is read loosely
-- from where the shortest form keeps it, and the comparison with encode()'s frame decides.
local function decode(data, pickles)
  if not pickles then return nil end
  -- The bytes where a short form keeps its opcodes and integer, in one call.
  local n, v = #data
  local p27, p28, _, _, _, _, _, _, _, p36, p37, p38, p39, p40 = byte(data, 27, 40)
  if p27 == 75 then
    if n == 29 then v = p28 end
  elseif p27 == 149 then
    if p36 == 77 and n == 39 then
      v = p37 + 256 * p38
    elseif p36 == 74 and n == 41 then
      v = p37 + 256 * p38 + 65536 * p39 + 16777216 * p40
      if p40 >= 128 then v = v - 4294967296 end
    elseif p36 == 138 and n >= 43 and n <= 45 and p37 == n - 38 then
      local s, o = 1, 0
      if byte(data, n - 1) >= 128 then s, o = -1, 255 end
      v = 0
      for i = n - 1, 38, -1 do v = v * 256 + o + s * byte(data, i) end
      if o > 0 then v = -v - 1 end
    end
  end
  if v and encode(v) == data then return v end
  return nil
end
"""


_DIGITS: Final = b"-0123456789"  # the bytes of json's integers, from byte 45 ('-') to 57 ('9')
_FIRST: Final = _DIGITS[0]
_SPAN: Final = _DIGITS[-1] - _FIRST + 1


def _json_lua(codec: int) -> str:
    """``encode`` and ``decode`` for json: a digit's effect by its distance from the end."""
    table = [_effect(d, _FIRST + b) for d in range(_JSON_DIGITS) for b in range(_SPAN)]
    # Then, by the count of digits, the checksum of that many zero bytes after the header.
    table += [zlib.crc32(_head(codec, n) + bytes(n)) for n in range(1, _JSON_DIGITS + 1)]
    return f"""
local sub, find, format = string.sub, string.find, string.format
local EFFECTS = {_entries(table)}
local function entry(i)
  local a, b, c, d = byte(EFFECTS, 4 * i + 1, 4 * i + 4)
  return a + 256 * b + 65536 * c + 16777216 * d
end
-- The frame Python writes for the integer v (its decimal digits), or nil past LIMIT.
local function encode(v)
  if not (v > -LIMIT and v < LIMIT) then return nil end
  local digits = format('%.0f', v)
  local n = #digits
  local crc = entry({_JSON_DIGITS * _SPAN - 1} + n)
  for i = 1, n do crc = bxor(crc, entry((n - i) * {_SPAN} + byte(digits, i) - {_FIRST})) end
  return frame({_lua_bytes(_head(codec, 0)[:8])} .. char(n) .. '\\0\\0\\0\\0\\0\\0\\0', crc,
               '\\0\\0\\0\\0' .. digits)
end
-- The integer in a json frame written as Python writes it, else nil (``pickles`` is unused).
local function decode(data, pickles)
  local digits = sub(data, 25)
  if #digits > {_JSON_DIGITS} or not (digits == '0' or find(digits, '^%-?[1-9]%d*$')) then
    return nil
  end
  local v = tonumber(digits)
  if encode(v) == data then return v end
  return nil
end
"""


def library(codec: int) -> str:
    """Lua defining ``encode(v)`` and ``decode(frame, pickles)`` for the codec whose id is
    ``codec`` (one of :data:`CODECS`), for a script to include.

    A script keeps nothing between calls, so whatever it builds (a table, a function) is
    built on every call: the checksums it needs are constants of the code instead, in strings
    the server compiles once, read four bytes at a time (``entry``).
    """
    return f"""
local byte, char, bxor, LIMIT = string.byte, string.char, bit.bxor, {LIMIT}
-- The frame of the 16 bytes head, the checksum crc (any 32-bit number) and the rest.
local function frame(head, crc, rest)
  if crc < 0 then crc = crc + 4294967296 end
  local c1 = crc % 256; crc = (crc - c1) / 256
  local c2 = crc % 256; crc = (crc - c2) / 256
  local c3 = crc % 256
  return head .. char(c1, c2, c3, (crc - c3) / 256) .. rest
end
{_json_lua(codec) if codec == _JSON else _pickle_lua(codec)}"""
