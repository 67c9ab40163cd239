"""Checking and repairing a System V segment, and removing one whose header is damaged.

Works on the segment's bytes under PHP's semaphore (the lock every shmfs and well-behaved PHP
writer takes), not through a handle, so a segment whose header no longer opens can be looked
at and mended. Verified (``layout.py`` has the format): PHP's header (magic and the bounds
newer PHP checks), the chunk chain from ``start`` to ``end``, no index twice, ``free`` equal
to ``total - end``, and each value: a shmfs frame's header, length and checksum, or, for PHP's
bare ``serialize()`` bytes, that they unserialize.

Repairing: a dead writer's journalled change is finished first (``journal.py``); a header
whose fields are out of bounds gets ``start = 40``, ``total`` from the segment's size (less
the journal's room where there is a journal); the chain is cut at the first chunk that fails
its checks (it and every chunk after it are dropped: nothing says where they start); values
that fail their checks are cut out as PHP removes a variable; ``end`` and ``free`` are set
from what remains. The repair writes in place, without the journal: a repair killed half way
is repaired by running it again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from shmfs.backends.sysv import ipc, layout
from shmfs.backends.sysv.journal import OVERHEAD, Journal
from shmfs.backends.sysv.semaphore import PhpSemaphore
from shmfs.backends.sysv.translate import translate, verify
from shmfs.errors import CorruptSegment, SegmentNotFound

if TYPE_CHECKING:
    from shmfs.backends.sysv.backend import SysvBackend
    from shmfs.check import Outcome

__all__ = ["check_segment", "destroy_damaged", "placed"]

_START, _END, _FREE, _TOTAL = 1, 2, 3, 4
_WHERE_WAIT: Final = 0.5


def placed(backend: SysvBackend, index: int) -> tuple[str | None, int | None]:
    """``(None, offset)`` of ``index``'s chunk (for ``SysvBackend.where``); a message about
    damage waits for the lock a moment at most (``shmfs.damage`` drops the place then)."""
    backend.acquire(_WHERE_WAIT)
    try:
        found = backend.read_at(index)
    finally:
        backend.release()
    return None, found


@contextlib.contextmanager
def _locked(
    key: int, trust_uids: frozenset[int], *, destroying: bool = False
) -> Iterator[tuple[int, memoryview]]:
    """The segment's shmid and bytes, attached, PHP's semaphore held; ``destroying``: the
    semaphore set goes too once nobody uses it (as ``SysvBackend.close`` does after a destroy)."""
    try:
        shmid = ipc.shmget(key, 0, 0)
    except FileNotFoundError:
        raise SegmentNotFound(f"no System V segment with key {key}", key=key) from None
    except OSError as exc:
        raise translate(exc, f"cannot open segment {key}", key) from exc
    stat = ipc.shm_stat(shmid)
    verify(stat, trust_uids, f"System V segment {key:#x}")
    try:
        semaphore = PhpSemaphore(key, stat.mode, trust_uids)
    except OSError as exc:
        raise translate(exc, f"cannot open the semaphore set of segment {key}", key) from exc
    try:
        semaphore.take(None)
        try:
            attachment = ipc.Attachment(shmid, stat.size)
            try:
                yield shmid, attachment.view
            finally:
                attachment.detach()
        finally:
            semaphore.give()
    finally:
        if destroying:
            with contextlib.suppress(OSError):
                if semaphore.unregister() == 0:
                    ipc.sem_remove(semaphore.semid)
        else:
            semaphore.abandon()


def check_segment(
    key: int, *, root: str | None, trust_uids: frozenset[int], repair: bool
) -> Outcome:
    """Check System V segment ``key``; with ``repair``, mend it (see the module's docstring).

    Raises:
        SegmentNotFound: no such segment.
        UnsafeSegment: the segment belongs to a user who is not trusted.
    """
    from shmfs.check import Outcome  # noqa: PLC0415  # shmfs.check imports the backends

    del root  # System V keys name segments per IPC namespace: no root
    outcome = Outcome()
    with _locked(key, trust_uids) as (_, buf), layout.word_view(buf) as words:
        _check(buf, words, outcome, repair=repair)
    return outcome


def _check(buf: memoryview, words: memoryview, outcome: Outcome, *, repair: bool) -> None:
    from shmfs.check import frame_problem  # noqa: PLC0415

    size = len(buf)
    try:
        header = layout.read_header(buf)
    except CorruptSegment as exc:
        outcome.add(exc.message, offset=0)
        if not repair:
            return
        header = _mended_header(buf, words)
        outcome.repairs.append(f"PHP header rebuilt (total={header.total})")
    else:
        journal = Journal.find(buf, words, header.total)
        if journal is not None and journal.recover():
            outcome.repairs.append("a dead writer's change finished")
            header = layout.read_header(buf)
    kept: list[tuple[int, int, int]] = []  # (pos, index, next) of sound chunks
    seen: set[int] = set()
    pos = header.start
    while pos < header.end:
        try:
            index, length, step = layout.chunk_at(words, header, pos)
        except CorruptSegment as exc:
            damaged = int(words[pos >> 3]) if pos + 8 <= size else None
            outcome.add(exc.message + " (the chain is cut here)", index=damaged, offset=pos)
            if repair and damaged is not None:
                outcome.dropped.append(damaged)
            break
        data = buf[pos + layout.CHUNK_HEADER_SIZE : pos + layout.CHUNK_HEADER_SIZE + length]
        problem = "the segment holds this index twice" if index in seen else None
        problem = problem or frame_problem(data, "php")
        data.release()
        seen.add(index)
        if problem is None:
            kept.append((pos, index, step))
        else:
            outcome.add(problem, index=index, offset=pos)
            if repair:
                outcome.dropped.append(index)
        pos += step
    if not repair:
        if header.free != header.total - header.end:
            outcome.add(
                f"the header's free is {header.free}, total - end is {header.total - header.end}",
                offset=_FREE * 8,
            )
        return
    _compact(buf, words, header, kept)
    outcome.repairs.append("PHP header's end and free set from the chunks kept")


def _mended_header(buf: memoryview, words: memoryview) -> layout.Header:
    """A header with every field in bounds: ``total`` kept if it was, else the segment's size
    (less the journal's room where one lies past it); ``end`` to be set by the caller."""
    size = len(buf) & ~7
    total = int(words[_TOTAL])
    if not layout.HEADER_SIZE <= total <= size:
        total = size
        journalled = size - OVERHEAD >= layout.HEADER_SIZE + 32
        if journalled and Journal.find(buf, words, size - OVERHEAD) is not None:
            total = size - OVERHEAD
    end = int(words[_END])
    if not layout.HEADER_SIZE <= end <= total or end % 8:
        end = layout.HEADER_SIZE
    words[_START] = layout.HEADER_SIZE
    words[_TOTAL] = total
    words[_END] = end
    words[_FREE] = total - end
    buf[: len(layout.MAGIC)] = layout.MAGIC
    return layout.Header(layout.HEADER_SIZE, end, total - end, total)


def _compact(
    buf: memoryview, words: memoryview, header: layout.Header, kept: list[tuple[int, int, int]]
) -> None:
    """Move the ``kept`` chunks down to ``start`` in order, zero what follows, and set
    ``end`` and ``free``."""
    at = header.start
    for pos, _, step in kept:
        if pos != at:
            buf[at : at + step] = buf[pos : pos + step]
        at += step
    old_end = max(header.end, at)
    buf[at:old_end] = bytes(old_end - at)
    words[_START] = header.start
    words[_END] = at
    words[_FREE] = header.total - at


def destroy_damaged(key: int, *, root: str | None, trust_uids: frozenset[int]) -> None:
    """Wipe and remove System V segment ``key`` whatever its header says.

    Raises:
        SegmentNotFound: no such segment.
        UnsafeSegment: the segment belongs to a user who is not trusted.
    """
    del root
    with _locked(key, trust_uids, destroying=True) as (shmid, buf):
        layout.wipe(buf)
        try:
            ipc.shm_remove(shmid)
        except OSError as exc:
            raise translate(exc, f"cannot remove segment {key}", key) from exc
