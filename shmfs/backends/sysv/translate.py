"""System V errors as shmfs's: an errno becomes the exception a caller of shmfs expects, and a
segment or semaphore set owned by an untrusted user is refused."""

from __future__ import annotations

import errno
import os

from shmfs.backends.sysv import ipc
from shmfs.errors import BackendUnavailable, SegmentFull, SegmentNotFound, ShmfsError, UnsafeSegment

__all__ = ["ipc_namespace", "translate", "verify"]


def ipc_namespace() -> str:
    """This process's IPC namespace, for messages about segments another namespace holds."""
    try:
        return os.readlink("/proc/self/ns/ipc")
    except OSError:
        return "unknown"


def translate(exc: OSError, what: str, key: int) -> ShmfsError:  # noqa: PLR0911  # a table of errno families
    """The shmfs error for ``exc``, which ``what`` on segment ``key`` raised."""
    if isinstance(exc, ShmfsError):
        return exc  # already ours (UnsafeSegment, LockTimeout are OSErrors too)
    code = exc.errno
    if code == errno.EINVAL:
        return SegmentFull(
            f"{what}: the kernel refused the size (over kernel.shmmax, or smaller than an "
            f"existing segment's) ({exc.strerror})",
            key=key,
            errno=code,
        )
    if code in (errno.ENOSPC, errno.ENOMEM):
        return SegmentFull(
            f"{what}: System V limits reached ({exc.strerror}): raise kernel.shmmni/shmall, "
            "or remove unused segments (shmfs ls --backend sysv; ipcs -m)",
            key=key,
            errno=code,
        )
    if code in (errno.EACCES, errno.EPERM):
        return UnsafeSegment(f"{what}: {exc.strerror}", key=key, errno=code)
    if code in (errno.EIDRM, errno.ENOENT):
        return SegmentNotFound(
            f"{what}: segment {key} was removed, or lives in another IPC namespace than ours "
            f"({ipc_namespace()})",
            key=key,
            errno=code,
        )
    if code == errno.ENOSYS:
        return BackendUnavailable(f"{what}: System V IPC is not available here", errno=code)
    return ShmfsError(f"{what}: {exc.strerror}", key=key, errno=code)


def verify(stat: ipc.IpcStat, trust_uids: frozenset[int], what: str) -> None:
    """Refuse ``what`` unless its owner and creator are trusted."""
    for uid in (stat.uid, stat.cuid):
        if uid not in trust_uids:
            raise UnsafeSegment(
                f"{what} belongs to uid {uid}, which is not trusted "
                f"(trusted: {sorted(trust_uids)}); refusing it (pass trust_uids= to allow)",
                owner=uid,
            )
