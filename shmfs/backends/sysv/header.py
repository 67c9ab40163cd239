"""PHP 8.2 ``ext/sysvshm`` segment header: magic, ``start``, ``end``, ``free``, ``total``.

The 40 bytes every PHP segment starts with, as ``shmfs.backends.sysv.layout`` draws them: reading
and validating them against the segment's real size, writing an empty one, and the word view
every read and write of the segment goes through. The chunks after the header are ``layout``'s.
Citations are as in ``layout``: ``docs/sysv-and-php.md`` §0.
"""

from __future__ import annotations

from typing import NamedTuple

from shmfs.errors import CorruptSegment

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "W_END",
    "W_FREE",
    "W_START",
    "W_TOTAL",
    "Header",
    "check_header",
    "checked_size",
    "initialise",
    "is_initialised",
    "read_header",
    "wipe",
    "word_view",
]

HEADER_SIZE = 40
"""``sizeof(sysvshm_chunk_head)``: magic, start, end, free, total."""
MAGIC = b"PHP_SM\0"
"""What ``strcmp``/``strcpy`` compare and write: 7 bytes, byte 7 of the header is never touched."""
# Word numbers of the header fields in the cast("q") view.
W_START, W_END, W_FREE, W_TOTAL = 1, 2, 3, 4


class Header(NamedTuple):
    """The four ``zend_long`` fields of a PHP segment header, as byte offsets and counts."""

    start: int
    end: int
    free: int
    total: int


def is_initialised(buf: memoryview) -> bool:
    """Return whether the segment starts with PHP's magic ``b"PHP_SM\\0"``.

    PHP's ``shm_attach`` (re)initialises any segment for which this is false, destroying what was
    in it ([PRE] L168-173); whether to do that is the caller's decision.
    """
    return len(buf) >= len(MAGIC) and buf[: len(MAGIC)] == MAGIC


def initialise(buf: memoryview) -> Header:
    """Write an empty PHP header sized to the whole buffer and return it.

    The header is ``start = end = 40``, ``total = len(buf)``, ``free = total - 40``: what PHP
    writes, except that the size is the buffer's (the kernel's), as newer PHP does, never a
    caller's guess ([MASTER] L173-181). The magic is written last, so a process that sees it
    also sees the fields. Existing data is not cleared; it becomes unreachable.

    PHP: ``shm_attach`` on a segment without the magic.

    Raises:
        CorruptSegment: The buffer is smaller than the 40-byte header (newer PHP: "segment too
            small").
    """
    size = checked_size(buf)
    header = Header(start=HEADER_SIZE, end=HEADER_SIZE, free=size - HEADER_SIZE, total=size)
    with word_view(buf) as words:
        words[W_START] = header.start
        words[W_END] = header.end
        words[W_TOTAL] = header.total
        words[W_FREE] = header.free
    buf[: len(MAGIC)] = MAGIC
    return header


def read_header(buf: memoryview) -> Header:
    """Read and validate the segment header.

    The checks are newer php-src's ``php_check_shm_head`` ([MASTER] L413-428) against the real
    size ``len(buf)``: ``40 <= start <= total``, ``start <= end <= total``,
    ``0 <= free <= total - end``, ``40 <= total <= len(buf)``; plus ``start`` and ``end`` being
    multiples of 8, as PHP always writes them.

    Raises:
        CorruptSegment: The buffer is smaller than a header, has no magic (never initialised), or
            the header fails a check; the message and the attributes give the numbers.
    """
    size = checked_size(buf)
    if not is_initialised(buf):
        raise CorruptSegment(
            f"segment is not initialised: it does not start with {MAGIC!r}", size=size
        )
    with word_view(buf) as words:
        header = Header(words[W_START], words[W_END], words[W_FREE], words[W_TOTAL])
    check_header(header, size)
    return header


def check_header(header: Header, size: int) -> None:
    """Raise CorruptSegment unless ``header`` passes [MASTER]'s checks (and ours) for ``size``."""
    start, end, free, total = header
    problem = None
    if not HEADER_SIZE <= total <= size:
        problem = f"total must be within {HEADER_SIZE}..{size} (the segment's size)"
    elif not HEADER_SIZE <= start <= total:
        problem = f"start must be within {HEADER_SIZE}..total"
    elif not start <= end <= total:
        problem = "end must be within start..total"
    elif not 0 <= free <= total - end:
        problem = "free must be within 0..total-end"
    elif start % 8 or end % 8:
        problem = "start and end must be multiples of 8, as PHP writes them"
    if problem is not None:
        raise CorruptSegment(
            f"PHP segment header is corrupted (start={start} end={end} free={free} "
            f"total={total}, segment size {size}): {problem}",
            start=start,
            end=end,
            free=free,
            total=total,
            size=size,
        )


def checked_size(buf: memoryview) -> int:
    """Return ``len(buf)``; CorruptSegment if it cannot hold a header ([MASTER]: too small)."""
    size = len(buf)
    if size < HEADER_SIZE:
        raise CorruptSegment(
            f"segment too small: {size} bytes cannot hold the {HEADER_SIZE}-byte PHP header",
            size=size,
        )
    return size


def word_view(buf: memoryview) -> memoryview:
    """View the 8-aligned prefix of ``buf`` as native signed 64-bit words (use in ``with``)."""
    if buf.format != "B" or buf.ndim != 1:
        raise TypeError(f"expected a 1-D memoryview of format 'B', got format {buf.format!r}")
    return buf[: len(buf) & ~7].cast("q")


def wipe(buf: memoryview) -> None:
    """Zero every byte of the segment, header included, so nothing of the data survives."""
    step = 1 << 20
    zeros = bytes(min(len(buf), step))
    for offset in range(0, len(buf), step):
        end = min(offset + step, len(buf))
        buf[offset:end] = zeros[: end - offset]
