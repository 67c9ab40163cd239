"""PHP 8.2 ``ext/sysvshm`` segment layout: header and chunk packing, bytes in, bytes out, no I/O.

Every function works on a writable ``memoryview`` (format ``"B"``) over the *whole* segment, so
``len(buf)`` is the kernel's ``shm_segsz``. Opening, mapping, locking and serialising values belong
to the caller; this module only reads and writes PHP's bytes, exactly as PHP 8.2 does, so PHP and
shmfs can share one segment. Citations refer to ``docs/sysv-and-php.md`` §0: [H] is
``php_sysvshm.h``, [PRE] the ``sysvshm.c`` that behaves as 8.2 does, [MASTER] hardened php-src.

Layout (x86_64, every ``zend_long`` a native = little-endian signed 64-bit word)::

    0        8        16       24       32       40
    +--------+--------+--------+--------+--------+---------------------------------+--------+
    | magic  | start  |  end   |  free  | total  | chunk | chunk | ... | chunk     | stale  |
    +--------+--------+--------+--------+--------+---------------------------------+--------+
     "PHP_SM\\0" + 1 byte     header, 40 bytes   ^start (40)              end ^  ^end+free = total

    chunk at pos:  +0 key (the variable index)  +8 length  +16 next  +24 data[length]  pad
                   next = ((length + 31) // 8) * 8 + 8,  so 8..15 bytes of slack follow the data

* Header ``<8sqqqq`` and chunk header ``<qqq`` are [H] L42-55. Only the 7 bytes ``"PHP_SM\\0"`` of
  the magic are compared and written ([PRE] L168-169); byte 7 is left alone.
* ``next`` is [PRE] L377. Newer PHP rejects tighter packing ([MASTER] L341-342), so the formula is
  followed exactly, and pad bytes are never written (PHP leaves whatever was there).
* A put appends at ``end`` ([PRE] L387-393); a lookup walks from ``start`` and the first matching
  chunk wins ([PRE] L399-423); a remove closes the gap with one memmove and does not clear the stale
  bytes it leaves between the new and the old ``end`` ([PRE] L427-444). A replacing put is remove
  then append, so it moves the variable to the end of the chain.
* Free space is bookkeeping: a put needs ``free >= next`` (an exact fit succeeds, [PRE] L383).

**Where we differ from PHP 8.2: a replacing put that does not fit.** PHP 8.2 removes the old chunk
first and only then finds there is no room, so the old value is lost ([PRE] L379-385).
:func:`put` checks first (it fits iff ``free + old_next >= new_next``) and raises
:class:`SegmentFull` with the segment untouched. When a put succeeds it still removes, then appends,
so the bytes are identical to PHP's.

**Where we are stricter than PHP 8.2: hostile bytes.** PHP 8.2 trusts the header and chunks, and
crashes or reads out of bounds on bad ones (docs/sysv-and-php.md §5). Here every header is validated
as [MASTER]'s ``php_check_shm_head`` (L413-428) does, against ``len(buf)``, and every chunk on a
walk is bounds-checked before it is read (after [MASTER] L341-345, L471), so a corrupted segment
raises :class:`CorruptSegment`, never ``IndexError`` or an endless loop. We additionally require
what every PHP build writes: ``start``, ``end`` and each ``next`` multiples of 8 (``next >= 32``),
and a chain that ends exactly at ``end``. Everything PHP 8.2 writes passes these checks.

Words are written with single aligned 8-byte stores through a ``memoryview.cast("q")``, never with
``struct.pack_into`` on live memory (it zeroes a word before it writes it: a reader could see the
zero). The header's words are read, checked and written in ``header``; the header's names are
named here too, for the callers that know the segment as one layout.
"""

from __future__ import annotations

from typing import NamedTuple

from shmfs.backends.sysv.header import (
    HEADER_SIZE,
    MAGIC,
    W_END,
    W_FREE,
    W_TOTAL,
    Header,
    check_header,
    checked_size,
    initialise,
    is_initialised,
    read_header,
    wipe,
    word_view,
)
from shmfs.errors import CorruptSegment, InvalidKey, InvalidKeyType, SegmentFull

__all__ = [
    "CHUNK_HEADER_SIZE",
    "HEADER_SIZE",
    "INDEX_MAX",
    "INDEX_MIN",
    "MAGIC",
    "Header",
    "Stats",
    "chunk_at",
    "chunk_size",
    "cut",
    "find",
    "get",
    "indices",
    "initialise",
    "is_initialised",
    "put",
    "read_header",
    "remove",
    "stats",
    "store",
    "wipe",
    "word_view",
]

CHUNK_HEADER_SIZE = 24
"""Bytes before a chunk's data: key (the variable index), length, next."""
INDEX_MIN = -(1 << 63)
"""Smallest variable index (``PHP_INT_MIN``)."""
INDEX_MAX = (1 << 63) - 1
"""Largest variable index (``PHP_INT_MAX``)."""

_MIN_CHUNK = 32  # sizeof(sysvshm_chunk): the smallest chunk PHP writes (length 0)


class Stats(NamedTuple):
    """Space accounting: the header's ``total`` and ``free``, the bytes chunks take
    (``end - start``, chunk headers and padding included) and the number of variables."""

    total: int
    used: int
    free: int
    variables: int


def chunk_size(length: int) -> int:
    """Return the bytes a chunk holding ``length`` data bytes takes: PHP's ``next``.

    ``((length + 31) // 8) * 8 + 8`` ([PRE] L377): a 24-byte chunk header, the data, padding to
    8, and 8 more bytes, because PHP counts ``sizeof(sysvshm_chunk)`` (32, with its ``mem`` byte).

    Raises:
        ValueError: ``length`` is negative.
    """
    if length < 0:
        raise ValueError(f"a chunk length cannot be negative, got {length}")
    return ((length + _MIN_CHUNK - 1) // 8) * 8 + 8


def find(buf: memoryview, header: Header, index: int) -> int:
    """Return the offset of the first chunk holding variable ``index``, or -1.

    Walks the chain from ``header.start`` like ``php_check_shm_data`` ([PRE] L399-423), checking
    each chunk's bounds before reading it, so it never reads past ``header.end`` and always ends.
    ``header`` is what :func:`read_header` returned for this buffer under the caller's lock (it
    saves reading it again; it is still checked against ``len(buf)``).

    Raises:
        InvalidKeyType: ``index`` is not an ``int`` (or is a ``bool``).
        InvalidKey: ``index`` is outside the signed 64-bit range.
        CorruptSegment: ``header`` fails its checks, or a chunk before the match has an
            impossible ``length`` or ``next``.
    """
    _check_index(index)
    check_header(header, checked_size(buf))
    with word_view(buf) as words:
        return _find(words, header, index)[0]


def get(buf: memoryview, index: int) -> memoryview | None:
    """Return the data bytes of variable ``index`` (a slice of ``buf``, not a copy), or ``None``.

    The bytes are PHP ``serialize()`` output when PHP wrote them. The slice shares the
    segment's memory: copy it (``bytes(view)``) before releasing the caller's lock, and release
    it before unmapping.

    PHP: the lookup half of ``shm_get_var``/``shm_has_var`` ([PRE] L302-316, L337).

    Raises:
        InvalidKeyType: ``index`` is not an ``int`` (or is a ``bool``).
        InvalidKey: ``index`` is outside the signed 64-bit range.
        CorruptSegment: The header or a chunk on the way fails its checks.
    """
    _check_index(index)
    header = read_header(buf)
    with word_view(buf) as words:
        pos, length, _ = _find(words, header, index)
    if pos < 0:
        return None
    data = pos + CHUNK_HEADER_SIZE
    return buf[data : data + length]


def put(buf: memoryview, index: int, data: bytes, *, scrub: bool = False) -> None:
    """Store ``data`` as variable ``index``: remove any old chunk, then append at ``end``.

    The bytes produced are identical to PHP 8.2's ``php_put_shm_data`` ([PRE] L371-395), with
    one difference: room is checked *before* the old chunk is removed, so a value that does not
    fit leaves the old one, and the whole segment, untouched (PHP 8.2 loses the old value).

    Args:
        buf: The whole segment.
        index: The variable index, a signed 64-bit ``int``.
        data: The bytes to store (PHP ``serialize()`` output for PHP to read them).
        scrub: Zero the bytes a replaced value leaves behind past the new ``end`` (PHP does not,
            so the image then differs from PHP's in bytes that nothing ever reads).

    Raises:
        InvalidKeyType: ``index`` is not an ``int`` (or is a ``bool``).
        InvalidKey: ``index`` is outside the signed 64-bit range.
        CorruptSegment: The header or a chunk on the way fails its checks.
        SegmentFull: The chunk does not fit in ``free`` plus the old chunk's size (PHP:
            "Not enough shared memory left").
    """
    _check_index(index)
    header = read_header(buf)
    with memoryview(data) as raw, raw.cast("B") as src, word_view(buf) as words:
        pos, _, old = _find(words, header, index)
        store(buf, words, index, src, pos=pos, old=old, scrub=scrub)


def store(
    buf: memoryview,
    words: memoryview,
    index: int,
    data: bytes | memoryview,
    *,
    pos: int,
    old: int,
    scrub: bool,
) -> int:
    """:func:`put` after its walk; return the new chunk's offset.

    ``words`` is :func:`word_view` of ``buf``, whose header the caller checked under the lock it
    still holds; ``pos`` and ``old`` are the offset and ``next`` of the first chunk holding
    ``index`` (-1 and 0 if none); ``data`` is bytes or a format ``"B"`` view.

    Raises:
        SegmentFull: As :func:`put`, with the segment untouched.
    """
    length = len(data)
    need = ((length + _MIN_CHUNK - 1) // 8) * 8 + 8  # chunk_size(), inline on a hot path
    free = words[W_FREE]
    if free + old < need:
        raise SegmentFull(
            f"not enough shared memory left: a {length}-byte value takes a {need}-byte chunk "
            f"but only {free + old} of the segment's {words[W_TOTAL]} bytes are free; "
            "attach a bigger segment",
            index=index,
            needed=need,
            free=free + old,
            total=words[W_TOTAL],
        )
    if pos >= 0:
        cut(buf, words, pos, old, scrub=scrub)
        free += old
    # [PRE] L386-393: chunk header, data (pad bytes untouched), then end, then free.
    at = words[W_END]
    word = at >> 3
    words[word] = index
    words[word + 1] = length
    words[word + 2] = need
    buf[at + CHUNK_HEADER_SIZE : at + CHUNK_HEADER_SIZE + length] = data
    words[W_END] = at + need
    words[W_FREE] = free - need
    return at


def remove(buf: memoryview, index: int, *, scrub: bool = False) -> bool:
    """Remove variable ``index``, closing the gap; return whether it was there.

    Like ``php_remove_shm_data`` ([PRE] L427-444): one memmove of the chunks after it, then
    ``end -= next`` and ``free += next``. The bytes between the new and the old ``end`` keep a
    stale copy, as in PHP, unless ``scrub`` is true.

    Args:
        buf: The whole segment.
        index: The variable index, a signed 64-bit ``int``.
        scrub: Zero the vacated bytes past the new ``end`` (the image then differs from PHP's in
            bytes that nothing ever reads).

    Raises:
        InvalidKeyType: ``index`` is not an ``int`` (or is a ``bool``).
        InvalidKey: ``index`` is outside the signed 64-bit range.
        CorruptSegment: The header or a chunk on the way fails its checks.
    """
    _check_index(index)
    header = read_header(buf)
    with word_view(buf) as words:
        pos, _, step = _find(words, header, index)
        if pos < 0:
            return False
        cut(buf, words, pos, step, scrub=scrub)
    return True


def indices(buf: memoryview) -> list[int]:
    """Return the variable indices in chain order (the order of their last write).

    A duplicated index (only a foreign writer could make one) is listed each time it occurs;
    lookups see the first.

    Raises:
        CorruptSegment: The header or any chunk fails its checks.
    """
    header = read_header(buf)
    found: list[int] = []
    with word_view(buf) as words:
        pos = header.start
        while pos < header.end:
            index, _, step = chunk_at(words, header, pos)
            found.append(index)
            pos += step
    return found


def stats(buf: memoryview) -> Stats:
    """Return the segment's space accounting and variable count.

    Raises:
        CorruptSegment: The header or any chunk fails its checks.
    """
    header = read_header(buf)
    return Stats(
        total=header.total,
        used=header.end - header.start,
        free=header.free,
        variables=len(indices(buf)),
    )


def _check_index(index: object) -> None:
    """Raise InvalidKeyType/InvalidKey unless ``index`` is a signed 64-bit int."""
    if isinstance(index, bool) or not isinstance(index, int):
        raise InvalidKeyType(
            f"a variable index must be an int, not {type(index).__name__}", index=index
        )
    if not INDEX_MIN <= index <= INDEX_MAX:
        raise InvalidKey(
            f"variable index {index} is outside the signed 64-bit range {INDEX_MIN}..{INDEX_MAX}",
            index=index,
        )


def chunk_at(words: memoryview, header: Header, pos: int) -> tuple[int, int, int]:
    """Read (index, length, next) of the chunk at ``pos`` after checking it lies within ``end``.

    ``words`` is :func:`word_view` of the segment, ``header`` its checked header, and ``pos`` an
    offset a walk from ``header.start`` reached (so a multiple of 8).

    Raises:
        CorruptSegment: The chunk does not fit before ``end``, or its ``length`` or ``next`` is
            impossible.
    """
    room = header.end - pos
    if room < _MIN_CHUNK:
        raise CorruptSegment(
            f"PHP segment chain is corrupted: it reaches offset {pos}, {room} bytes before "
            f"end={header.end}, too few for a {_MIN_CHUNK}-byte chunk",
            offset=pos,
            end=header.end,
        )
    # pos is a multiple of 8 (start is, and so is every next), and pos + 32 <= end <= len(buf),
    # so these three words are inside the view.
    word = pos >> 3
    index, length, step = words[word], words[word + 1], words[word + 2]
    if step < _MIN_CHUNK or step % 8 or step > room:
        raise CorruptSegment(
            f"PHP segment chain is corrupted: the chunk at offset {pos} has next={step}; "
            f"it must be a multiple of 8 within {_MIN_CHUNK}..{room} (end={header.end})",
            offset=pos,
            next=step,
            end=header.end,
        )
    if not 0 <= length <= step - _MIN_CHUNK:
        raise CorruptSegment(
            f"PHP segment chain is corrupted: the chunk at offset {pos} has length={length}; "
            f"its next={step} leaves room for 0..{step - _MIN_CHUNK} data bytes",
            offset=pos,
            length=length,
            next=step,
        )
    return index, length, step


def _find(words: memoryview, header: Header, index: int) -> tuple[int, int, int]:
    """Return (offset, length, next) of the first chunk holding ``index``; (-1, 0, 0) if none."""
    pos = header.start
    while pos < header.end:
        found, length, step = chunk_at(words, header, pos)
        if found == index:
            return pos, length, step
        pos += step  # step >= 32, so the walk ends within (end - start) / 32 steps
    return -1, 0, 0


def cut(buf: memoryview, words: memoryview, pos: int, step: int, *, scrub: bool) -> None:
    """:func:`remove` after its walk: cut the checked ``step``-byte chunk at ``pos`` out of the
    chain (``words``: :func:`word_view` of ``buf``, whose header the caller checked)."""
    end = words[W_END]
    tail = end - pos - step
    # [PRE] L438-442: free and end first, then the memmove (a memoryview slice copy is a
    # memmove, overlap included).
    words[W_FREE] += step
    words[W_END] = end - step
    if tail > 0:
        buf[pos : pos + tail] = buf[pos + step : end]
    if scrub:
        buf[end - step : end] = bytes(step)
