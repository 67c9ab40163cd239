"""The frame every stored value travels in: header, checksum, signature, out-of-band buffers.

A codec (``shmfs.codecs``) turns a Python value into bytes and back. The frame wraps those bytes
so that any reader can decode what any writer stored, whatever codec the writer chose, and can
tell damage from data::

    offset  size  field
         0     4  magic     b"\\x93SHF"  (0x93 cannot start a PHP serialize() value)
         4     1  version   FORMAT_VERSION (SIGNED_VERSION when signed); a newer one is
                            refused, never guessed at
         5     1  codec     CODECS[name].id
         6     1  flags     bit 0: signed, a 32-byte HMAC-SHA256 tag follows the payload;
                            bit 1: out-of-band buffers (see below)
         7     1  reserved  0
         8     8  length    payload length, little-endian
        16     4  crc32     over bytes 0..15 and the checked part of the payload
        20     4  reserved  0
        24     -  payload   [+ 32-byte tag]

The checksum covers the whole payload up to ``FULL_CHECK_LIMIT`` (64 KiB). Above that it covers the
first and last 4 KiB only: zlib's crc32 runs at about 7 GB/s here against 57 GB/s for memcpy, so a
full checksum would make a 1 MiB get eight times slower than copying the value, and even 32 KiB
edges cost half as much as the copy. Truncation and
length damage are still caught at any size (the length field is checked against the bytes
present); a flipped bit in the middle of a large value is not. Signed values (``secret=``) are
verified over every byte, whatever their size.

A signed frame's HMAC-SHA256 covers, before the header's first 16 bytes and the payload, the
segment key and the variable index it was written for (``_binding``), so a signed frame copied
to another index or another segment fails its check. Frames signed that way carry version
``SIGNED_VERSION`` (2): a shmfs that only knows version 1 refuses them as written by a newer
shmfs instead of failing their signature, and this one refuses a version-1 signed frame (whose
tag names no key or index) as unsafe. Unsigned frames stay at version 1, byte for byte.
What the binding cannot stop: an older signed value of the *same* index and segment put back
in place (a replay); that needs a counter no reader can check without a trusted store.

Flag bit 1 marks a pickle whose protocol-5 buffers are stored apart, after it; that layout, and
how a pickle of one ``bytes`` is recognised without unpickling it, are in ``shmfs.pickling``.

Every encoding goes through the codec object: its ``encode``, or, for a pickle dialect, its
``pickler`` (protocol 5, buffers out of band); what a frame may hold is decided by the codec's
``pickle_dialect``, never by its name.

Its length (just over 400 lines): encoding, decoding, the signature and the out-of-band split
all read and write the one header above and follow one set of version rules; split apart, each
half would reach into the other's private helpers.
"""

from __future__ import annotations

import dataclasses
import hmac
import pickle
import struct
import zlib
from typing import Any, Final, NamedTuple

from shmfs import pickling
from shmfs.codecs import CODECS, PROTOCOL, Codec, decode_failed, decode_payload, is_plain
from shmfs.errors import CorruptSegment, SerializationError, UnsafeSegment

__all__ = [
    "FORMAT_VERSION",
    "FULL_CHECK_LIMIT",
    "HEADER",
    "MAGIC",
    "SIGNED_VERSION",
    "SPLIT_HEAD",
    "Pieces",
    "Split",
    "body_at",
    "decode",
    "encode",
    "first_word",
    "view_payload",
]

MAGIC: Final = b"\x93SHF"
FORMAT_VERSION: Final = 1
#: The version of a signed frame, whose tag also covers the segment key and variable index.
SIGNED_VERSION: Final = 2
HEADER: Final = struct.Struct("<4sBBBBQII")
FULL_CHECK_LIMIT: Final = 64 * 1024
_EDGE: Final = 4 * 1024
_FLAG_SIGNED: Final = 1
_FLAG_BUFFERS: Final = 2  # a pickle with out-of-band buffers (shmfs.pickling's layout)
_KNOWN_FLAGS: Final = _FLAG_SIGNED | _FLAG_BUFFERS
_TAG_SIZE: Final = 32
_BINDING: Final = struct.Struct("<8sqq")
_BINDING_TAG: Final = b"shmfs\x00v2"


def _binding(at: tuple[int, int] | None) -> bytes:
    """What a signature covers before the frame: a domain tag, the segment key and the index."""
    if at is None:
        raise ValueError("a signed frame needs the segment key and index it is written for")
    return _BINDING.pack(_BINDING_TAG, *at)


_BY_ID: Final = {codec.id: codec for codec in CODECS.values()}
# What decode() reports for a frame with out-of-band buffers: the same codec, decoding its table.
_OUT_OF_BAND: Final = {
    codec.id: dataclasses.replace(codec, decode=pickling.loads_out_of_band)
    for codec in CODECS.values()
    if codec.pickle_dialect
}


def first_word(codec_id: int) -> int:
    """An unsigned frame's first 8 bytes (magic, version, codec, no flags) as a little-endian
    word: what the fast paths compare a frame's first word with."""
    return int.from_bytes(HEADER.pack(MAGIC, FORMAT_VERSION, codec_id, 0, 0, 0, 0, 0)[:8], "little")


# A frame's first 8 bytes (magic, version, codec, flags, reserved) as one little-endian word, for
# every unsigned frame this version writes.
_UNSIGNED: Final = {first_word(codec.id): codec for codec in CODECS.values()}
_FIRST_WORD: Final = {codec.id: word for word, codec in _UNSIGNED.items()}
_WORDS: Final = struct.Struct("<QQQ")
_HEAD16: Final = struct.Struct("<QQ")


def _crc(head: bytes | memoryview, payload: bytes | memoryview) -> int:
    """The frame's checksum: header bytes 0..15, then the payload (its ends, past 64 KiB)."""
    crc = zlib.crc32(head[:16])
    if len(payload) <= FULL_CHECK_LIMIT:
        return zlib.crc32(payload, crc)
    return zlib.crc32(payload[-_EDGE:], zlib.crc32(payload[:_EDGE], crc))


class Pieces:
    """A large frame kept as the pieces it was built from (header, pickle opcodes, the value
    itself, STOP, and any signature), for a backend that copies each where it goes: joining
    them first would copy the whole value once more. ``len()`` is the frame's length."""

    __slots__ = ("parts", "size")

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts
        self.size = sum(len(part) for part in parts)

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)


def _pieces_crc(head16: bytes, first: bytes, body: bytes, last: bytes) -> int:
    """``_crc`` of a frame whose payload is ``first + body + last`` (more than
    ``FULL_CHECK_LIMIT`` bytes), without joining them."""
    with memoryview(body) as view:
        crc = zlib.crc32(first, zlib.crc32(head16))
        crc = zlib.crc32(view[: _EDGE - len(first)], crc)
        return zlib.crc32(last, zlib.crc32(view[len(body) - (_EDGE - len(last)) :], crc))


def _frame_pieces(
    codec: Codec,
    pieces: list[bytes],
    flags: int,
    secret: bytes | None,
    at: tuple[int, int] | None,
) -> Pieces:
    """``encode`` for a payload in pieces (a small head, a large body, a small tail)."""
    length = sum(len(piece) for piece in pieces)
    version = FORMAT_VERSION if secret is None else SIGNED_VERSION
    head = HEADER.pack(MAGIC, version, codec.id, flags, 0, length, 0, 0)
    first, body, last = pieces
    crc = _pieces_crc(head[:16], first, body, last)
    head = head[:16] + struct.pack("<I", crc) + head[20:]
    parts = [head, first, body, last]
    if secret is not None:
        signature = hmac.new(secret, _binding(at) + head[:16], "sha256")
        for piece in pieces:
            signature.update(piece)
        parts.append(signature.digest())
    return Pieces(parts)


def encode(
    codec: Codec,
    value: Any,
    secret: bytes | None = None,
    *,
    framed: bool = True,
    pieces: bool = False,
    at: tuple[int, int] | None = None,
) -> bytes | Pieces:
    """Encode ``value`` with ``codec`` and frame it (``framed=False``: the codec's bytes alone,
    for a backend whose native format they are, such as PHP's on sysv). ``pieces``: the caller
    takes a large frame as :class:`Pieces` (only ever ``bytes`` otherwise). ``at``: the
    ``(segment key, index)`` the value is stored at, which a signature covers (required with
    ``secret``).

    Raises:
        SerializationError: the codec cannot encode the value; nothing was written.
    """
    flags = _FLAG_SIGNED if secret is not None else 0
    if codec.pickle_dialect and type(value) is bytes and len(value) > FULL_CHECK_LIMIT:
        body = pickling.bytes_pickle(value)
        if not framed:
            return b"".join(body)
        frame = _frame_pieces(codec, body, flags, secret, at)
        return frame if pieces else bytes(frame)
    try:
        if codec.pickler is None or not framed:
            payload = codec.encode(value)
        elif is_plain(value):  # what every pickler would write, at plain pickle's speed
            payload = pickle.dumps(value, PROTOCOL)
        else:
            stream, buffers = pickling.dumps_out_of_band(codec.pickler, value)
            if buffers:
                flags |= _FLAG_BUFFERS
                payload = pickling.pack_buffers(stream, buffers)
            else:
                payload = stream
    except SerializationError:
        raise
    except Exception as exc:  # any failure inside a serializer means "cannot encode"
        raise SerializationError(
            f"cannot encode a {type(value).__name__} with the {codec.name} codec: {exc}",
            codec=codec.name,
        ) from exc
    if not framed:
        return payload
    if not flags and len(payload) <= FULL_CHECK_LIMIT:  # every small put: two packs
        first = _FIRST_WORD[codec.id]
        crc = zlib.crc32(payload, zlib.crc32(_HEAD16.pack(first, len(payload))))
        return _WORDS.pack(first, len(payload), crc) + payload
    version = FORMAT_VERSION if secret is None else SIGNED_VERSION
    head = HEADER.pack(MAGIC, version, codec.id, flags, 0, len(payload), 0, 0)
    head = head[:16] + struct.pack("<I", _crc(head, payload)) + head[20:]
    if secret is None:
        return head + payload
    tag = hmac.digest(secret, _binding(at) + head[:16] + payload, "sha256")
    return head + payload + tag


def decode(
    data: bytes | memoryview | Split,
    secret: bytes | None = None,
    at: tuple[int, int] | None = None,
) -> tuple[Codec, bytes | memoryview]:
    """Check a frame and return its codec and payload, not yet decoded. ``at``: the
    ``(segment key, index)`` it was read from, which a signature must cover (required with
    ``secret``).

    Raises:
        CorruptSegment: bad magic, unknown version or codec, wrong length or checksum.
        UnsafeSegment: the signature is missing, unexpected or wrong for ``secret``.
    """
    # Every get runs this: the common frame (unsigned, checksummed whole) is checked with one
    # unpack and one dict lookup; anything else, damage included, takes the careful path below,
    # which says precisely what is wrong. A Split is three items long, so never gets in here
    # (mypy cannot see that: hence the ignores; an isinstance test would cost every get).
    if secret is None and len(data) >= HEADER.size:
        first, length, check = _WORDS.unpack_from(data)  # type: ignore[arg-type]
        codec = _UNSIGNED.get(first)
        # ``check`` holds the crc in its low half and the reserved word in its high half, so
        # equality with a crc32 also proves the reserved word zero.
        if codec is not None and length <= FULL_CHECK_LIMIT and len(data) == HEADER.size + length:
            payload = data[HEADER.size :]
            if zlib.crc32(payload, zlib.crc32(data[:16])) == check:  # type: ignore[arg-type]
                return codec, payload  # type: ignore[return-value]
    return _decode_checked(data, secret, at)


def _decode_checked(
    data: bytes | memoryview | Split, secret: bytes | None, at: tuple[int, int] | None
) -> tuple[Codec, bytes | memoryview]:
    if isinstance(data, Split):
        return _SPLIT_CODEC, _check_split(data, secret)
    view = memoryview(data)
    if len(view) < HEADER.size:
        raise CorruptSegment("stored bytes are not a shmfs value (too short)")
    magic, version, codec_id, flags, reserved, length, crc, reserved_word = HEADER.unpack_from(view)
    if magic != MAGIC:
        raise CorruptSegment("stored bytes are not a shmfs value (bad magic)")
    _check_version(version)
    if reserved or reserved_word or flags & ~_KNOWN_FLAGS:
        raise CorruptSegment("value header has unknown flags or non-zero reserved bytes")
    codec = _BY_ID.get(codec_id)
    if codec is None:
        raise CorruptSegment(f"value names unknown codec id {codec_id}")
    signed = bool(flags & _FLAG_SIGNED)
    expected = HEADER.size + length + (_TAG_SIZE if signed else 0)
    if len(view) != expected:
        raise CorruptSegment(f"value is {len(view)} bytes, its header says {expected}")
    payload = view[HEADER.size : HEADER.size + length]
    if length <= FULL_CHECK_LIMIT:  # the common case, inline: this is every get's hot path
        computed = zlib.crc32(payload, zlib.crc32(view[:16]))
    else:
        computed = _crc(view, payload)
    if computed != crc:
        raise CorruptSegment("value fails its checksum")
    _check_signature(view, payload, signed, secret, at)
    if flags & _FLAG_BUFFERS:
        if not codec.pickle_dialect:
            raise CorruptSegment(f"a {codec.name} value cannot have out-of-band buffers")
        return _OUT_OF_BAND[codec.id], payload
    return codec, payload


def _check_version(version: int) -> None:
    """Refuse a version this shmfs does not read."""
    if version not in (FORMAT_VERSION, SIGNED_VERSION):
        raise CorruptSegment(
            f"value has format version {version}; this shmfs reads versions {FORMAT_VERSION}"
            f" and {SIGNED_VERSION} (written by a newer shmfs? upgrade it)",
            version=version,
        )


def _check_signature(
    view: memoryview,
    payload: memoryview,
    signed: bool,
    secret: bytes | None,
    at: tuple[int, int] | None,
) -> None:
    """Refuse a frame whose signature is missing, unexpected, of a version that names no key
    and index, or wrong for ``secret`` and ``at``; the frame passed its checksum."""
    version = view[4]
    if signed and version == FORMAT_VERSION:
        raise UnsafeSegment(
            "value was signed by an older shmfs, whose signature does not name the segment key"
            " and index (it could have been moved here): store it again"
        )
    if version == SIGNED_VERSION and not signed:
        raise CorruptSegment(f"value has version {version} but no signature")
    if signed != (secret is not None):
        raise UnsafeSegment(
            "value is signed but no secret= was given"
            if signed
            else "value is not signed but this segment requires secret="
        )
    if secret is not None and not hmac.compare_digest(
        view[HEADER.size + len(payload) :],
        hmac.digest(secret, _binding(at) + bytes(view[:16]) + payload, "sha256"),
    ):
        raise UnsafeSegment(
            "value's signature does not match secret= for this segment key and index"
            " (tampered, moved from another index or segment, or another secret)"
        )


def view_payload(codec: Codec, payload: bytes | memoryview) -> Any:
    """``decode_payload``, leaving stored bytes where they lie: a ``raw`` value or a pickled
    ``bytes`` comes back as a read-only memoryview of ``payload``, and out-of-band buffers are
    handed to the unpickler as read-only views of it; anything else is decoded (copied).

    Raises:
        CorruptSegment: an out-of-band table that does not describe the payload.
        SerializationError: the codec cannot decode the bytes.
    """
    view = memoryview(payload).toreadonly()
    if codec.bytes_only:
        return view
    if codec.pickle_dialect:
        body = pickling.lone_bytes(view)
        if body is not None:
            return body
        if codec.decode is pickling.loads_out_of_band:
            stream, buffers = pickling.unpack_buffers(view)
            try:
                return pickle.loads(stream, buffers=buffers)
            except Exception as exc:
                raise decode_failed(codec, exc) from exc
    return decode_payload(codec, payload)


class Split(NamedTuple):
    """A large frame holding one ``bytes`` value, read in three pieces so that the value is
    copied out of shared memory once, straight into the object the caller gets (see
    :func:`body_at`). :func:`decode` checks it like any frame."""

    head: bytes  # the frame header and the pickle opcodes before the bytes
    body: bytes  # the value
    tail: bytes  # the pickle's STOP opcode


#: How much of a frame :func:`body_at` needs to see.
SPLIT_HEAD: Final = HEADER.size + 11


def body_at(head: bytes, length: int) -> int | None:
    """Where the value starts in a ``length``-byte frame beginning with ``head``, if the frame is
    an unsigned pickle of exactly one ``bytes`` larger than ``FULL_CHECK_LIMIT`` (what
    :func:`encode` writes for large bytes); ``None`` for any other frame."""
    if len(head) < SPLIT_HEAD:
        return None
    first, payload_length, check = _WORDS.unpack_from(head)
    codec = _UNSIGNED.get(first)
    if (
        codec is None
        or not codec.pickle_dialect
        or HEADER.size + payload_length != length
        or payload_length <= FULL_CHECK_LIMIT
        or check >> 32
    ):
        return None
    at = pickling.bytes_at(head[HEADER.size :], payload_length)
    return None if at is None else HEADER.size + at


def _check_split(split: Split, secret: bytes | None) -> bytes:
    """The value of a :class:`Split` frame, once its checksum and STOP opcode are verified."""
    if secret is not None:  # body_at takes unsigned frames only
        raise UnsafeSegment("value is not signed but this segment requires secret=")
    head, body, tail = split
    if tail != b".":
        raise CorruptSegment("stored bytes value is not followed by pickle's STOP opcode")
    if _pieces_crc(head[:16], head[HEADER.size :], body, tail) != _WORDS.unpack_from(head)[2]:
        raise CorruptSegment("value fails its checksum")
    return body


def _identity(data: Any) -> Any:
    return data


# What decode() reports for a Split: the value is already the bytes, and nothing is unpickled,
# so there is no code to run and no writer to distrust.
_SPLIT_CODEC: Final = Codec("bytes", 0, _identity, _identity, executes_code=False)
