"""Every PHP-layout segment in this IPC namespace that we may read, for ``shmfs ls``."""

from __future__ import annotations

from shmfs.backends import SegmentInfo
from shmfs.backends.sysv import ipc, layout
from shmfs.backends.sysv.translate import ipc_namespace
from shmfs.errors import CorruptSegment

__all__ = ["list_segments"]


def list_segments() -> list[SegmentInfo]:
    """Report every PHP-layout segment in this IPC namespace that we may read."""
    found = []
    try:
        with open("/proc/sysvipc/shm", encoding="ascii") as table:
            rows = [line.split() for line in table.readlines()[1:]]
    except OSError:
        return []
    for row in rows:
        # proc(5): every column is decimal but perms, which is octal ("666" is 0o666).
        info = _peek(
            *(int(row[column], 8 if column == 2 else 10) for column in (0, 1, 2, 3, 4, 7, 13, 6))
        )
        if info is not None:
            found.append(info)
    return sorted(found, key=lambda info: info.key)


def _peek(*row: int) -> SegmentInfo | None:
    """A PHP-layout segment's report from its /proc/sysvipc/shm row (key, shmid, perms, size,
    cpid, uid, ctime, nattch), read through a read-only attachment; ``None`` if it is not one we
    can read."""
    key, shmid, perms, size, cpid, uid, ctime, nattch = row
    if key == 0 or size < layout.HEADER_SIZE:
        return None
    try:
        attachment = ipc.Attachment(shmid, size, readonly=True)
    except OSError:
        return None
    damaged = None
    try:
        if not layout.is_initialised(attachment.view):
            return None
        stats = layout.stats(attachment.view)
    except CorruptSegment as exc:
        # Listed all the same, flagged, so that it can be checked and removed (shmfs check, rm).
        damaged, stats = exc.message, layout.Stats(size, 0, 0, 0)
    finally:
        attachment.detach()
    signed = key - (1 << 32) if key >= 1 << 31 else key
    return SegmentInfo(
        damaged=damaged,
        key=signed,
        backend="sysv",
        size=stats.total,
        used=stats.used + layout.HEADER_SIZE,
        variables=stats.variables,
        perm=perms & 0o777,
        owner=uid,
        location=f"shmid {shmid} in {ipc_namespace()}",
        created=float(ctime),
        creator_pid=cpid,
        attached=nattch,
    )
