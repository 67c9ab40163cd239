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
stay exact. CRC-32 in Lua costs about 0.4 us a byte (``bit`` calls), so the script starts from
the checksum of the fixed part of each form, computed here, and runs it over the integer's own
bytes only; and each codec has a script of its own, holding only its forms (building the
tables of every codec cost each call a few microseconds), which reads integers of that codec
alone.
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


def _nibbles() -> list[int]:
    """The CRC-32 of each nibble: two steps of the checksum per byte. A table of the 256 bytes
    halves the steps, but building it costs each call more than a counter's steps take."""
    table = []
    for nibble in range(16):
        crc = nibble
        for _ in range(4):
            crc = (crc >> 1) ^ 0xEDB88320 if crc & 1 else crc >> 1
        table.append(_signed32(crc))
    return table


def _lua_bytes(data: bytes) -> str:
    return "'" + "".join(f"\\{byte}" for byte in data) + "'"


# A pickle's forms in the order of the Lua tables: shape 0 K, 1 M, 2 J, then LONG1 of n bytes.
_SHAPES: Final = (0, 1, 2, 5, 6, 7)


def _forms(codec: int) -> list[tuple[bytes, bytes]]:
    """The codec's forms of integers in the order of the Lua tables (json's: by the payload's
    length): the header's first 16 bytes and the payload before the integer's bytes."""
    if codec == _JSON:
        return [(_head(codec, length), b"") for length in range(1, _JSON_DIGITS + 1)]
    forms = []
    for shape in _SHAPES:
        prefix = _pickle_prefix(shape)
        forms.append((_head(codec, len(prefix) + _pickle_size(shape) + 1), prefix))
    return forms


_PICKLE_LUA: Final = """
-- A pickle's form for v (index into the tables) and v's bytes there, STOP included.
local function form(v)
  if v >= 0 and v < 256 then return 1, char(v, 46) end
  if v >= 0 and v < 65536 then return 2, char(v % 256, (v - v % 256) / 256, 46) end
  if v >= -2147483648 and v < 2147483648 then return 3, le32(v) .. '.' end
  local n = 5
  while not (v >= -(2 ^ (8 * n - 1)) and v < 2 ^ (8 * n - 1)) do n = n + 1 end
  -- Two's complement: a negative v as the complement of -v - 1 (v + 2^(8n) is not exact).
  local out, flip = {}, 0
  if v < 0 then v, flip = -v - 1, 255 end
  for i = 1, n do
    local b = v % 256
    out[i] = abs(flip - b)
    v = (v - b) / 256
  end
  out[n + 1] = 46
  return n - 1, char(unpack(out))
end
-- The integer in a pickle's frame in the form Python writes it (its shortest), that form,
-- and the bytes after the form's prefix; nil for anything else.
local function parse(frame)
  local op, k, size = byte(frame, 27), 1, 1
  if op == 149 then
    op = byte(frame, 36)
    if op == 77 then k, size = 2, 2 elseif op == 74 then k, size = 3, 4
    elseif op == 138 then size = byte(frame, 37) or 0; k = size - 1
    else return nil end
    if k < 2 then return nil end
  elseif op ~= 75 then
    return nil
  end
  local prefix = PREFIX[k]
  if not prefix then return nil end
  local tail = sub(frame, 25 + #prefix)
  if #tail ~= size + 1 or byte(tail, size + 1) ~= 46 then return nil end
  local v
  if k == 1 then v = byte(tail, 1)
  elseif k == 2 then
    local b1, b2 = byte(tail, 1, 2)
    v = b1 + 256 * b2
  elseif k == 3 then
    local b1, b2, b3, b4 = byte(tail, 1, 4)
    v = bor(b1, lshift(b2, 8), lshift(b3, 16), lshift(b4, 24))
  else
    local flip = 0
    if byte(tail, size) >= 128 then flip = 255 end
    v = 0
    for i = size, 1, -1 do v = v * 256 + abs(flip - byte(tail, i)) end
    if flip > 0 then v = -v - 1 end
  end
  if not (v > -LIMIT and v < LIMIT) or form(v) ~= k then return nil end
  return v, k, tail
end
"""

_JSON_LUA: Final = """
local function form(v)
  local digits = format('%.0f', v)
  return #digits, digits
end
-- The integer in a json frame written as Python writes it, its form and its digits; or nil.
local function parse(frame)
  local tail = sub(frame, 25)
  if #tail > 17 or not (tail == '0' or find(tail, '^%-?[1-9]%d*$')) then return nil end
  local v = tonumber(tail)
  if not (v > -LIMIT and v < LIMIT) then return nil end
  return v, #tail, tail
end
"""


def library(codec: int) -> str:
    """Lua defining ``encode(v)`` and ``decode(frame, pickles)`` for the codec whose id is
    ``codec`` (one of :data:`CODECS`), for a script to include."""
    forms = _forms(codec)
    heads = ", ".join(_lua_bytes(head) for head, _ in forms)
    prefixes = ", ".join(_lua_bytes(prefix) for _, prefix in forms)
    states = ", ".join(str(_signed32(zlib.crc32(head + prefix))) for head, prefix in forms)
    nibbles = ", ".join(str(value) for value in _nibbles())
    return f"""
local byte, char, sub = string.byte, string.char, string.sub
local find, format = string.find, string.format
local bnot, bxor, band, bor = bit.bnot, bit.bxor, bit.band, bit.bor
local rshift, lshift, abs = bit.rshift, bit.lshift, math.abs
local HEAD = {{{heads}}}
local PREFIX = {{{prefixes}}}
local CRC_FROM = {{{states}}}
local NIBBLE = {{[0] = {nibbles}}}
local LIMIT = {LIMIT}
-- The checksum of form k's fixed parts continued over s.
-- (Library functions are called through locals: a global's lookup costs 4 times the call.)
local function crc32(k, s)
  local crc = bnot(CRC_FROM[k])
  for i = 1, #s do
    crc = bxor(crc, byte(s, i))
    crc = bxor(rshift(crc, 4), NIBBLE[band(crc, 15)])
    crc = bxor(rshift(crc, 4), NIBBLE[band(crc, 15)])
  end
  return bnot(crc)
end
local function le32(v)
  return char(band(v, 255), band(rshift(v, 8), 255), band(rshift(v, 16), 255), rshift(v, 24))
end
{_JSON_LUA if codec == _JSON else _PICKLE_LUA}
-- The frame Python writes for the integer v, or nil past LIMIT.
local function encode(v)
  if not (v > -LIMIT and v < LIMIT) then return nil end
  local k, tail = form(v)
  return HEAD[k] .. le32(crc32(k, tail)) .. '\\0\\0\\0\\0' .. PREFIX[k] .. tail
end
-- The integer a frame holds, or nil if it holds anything else or is not exactly the frame
-- encode() writes for it (another codec, damage included); a pickle only if ``pickles``.
local function decode(frame, pickles)
  if byte(frame, 6) ~= {codec} or ({codec} ~= {_JSON} and not pickles) then return nil end
  local v, k, tail = parse(frame)
  if not v or sub(frame, 1, 24 + #PREFIX[k]) ~=
     HEAD[k] .. le32(crc32(k, tail)) .. '\\0\\0\\0\\0' .. PREFIX[k] then
    return nil
  end
  return v
end
"""
