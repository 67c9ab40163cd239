"""System V errors as shmfs's: an errno becomes the exception a caller of shmfs expects, and a
segment or semaphore set owned by an untrusted user is refused."""

from __future__ import annotations

import errno
import os
from typing import NamedTuple

from shmfs.backends.sysv import ipc
from shmfs.errors import BackendUnavailable, SegmentFull, SegmentNotFound, ShmfsError, UnsafeSegment

__all__ = ["Holder", "holder", "ipc_namespace", "squatted", "translate", "verify"]


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


class Holder(NamedTuple):
    """Who holds a System V key, as ``/proc/sysvipc`` reports it."""

    uid: int
    cuid: int
    mode: int
    #: A segment's size in bytes, or a semaphore set's number of semaphores.
    size: int


def holder(kind: str, key: int) -> Holder | None:
    """The owner of the segment (``kind`` "shm") or semaphore set ("sem") with ``key`` in this
    IPC namespace, or ``None``. ``/proc/sysvipc`` lists every object to every user, so this
    works where ``IPC_STAT`` is refused for want of read permission."""
    try:
        with open(f"/proc/sysvipc/{kind}", encoding="ascii") as table:
            header, *rows = table.read().splitlines()
    except OSError:
        return None
    names = header.split()
    amount = "size" if kind == "shm" else "nsems"
    for row in rows:
        fields = dict(zip(names, row.split(), strict=False))
        try:
            if int(fields["key"]) & 0xFFFFFFFF == key & 0xFFFFFFFF:
                return Holder(
                    int(fields["uid"]),
                    int(fields["cuid"]),
                    int(fields["perms"], 8) & 0o777,
                    int(fields[amount]),
                )
        except (KeyError, ValueError):
            return None
    return None


def squatted(exc: OSError, kind: str, key: int, what: str) -> ShmfsError:
    """The error for ``exc``, raised when opening the segment or semaphore set (``kind`` "shm"
    or "sem") of ``key``: if one exists that we cannot use (another user's, with a mode that
    keeps us out, or not the shape shmfs and PHP make), an ``UnsafeSegment`` naming its owner
    and the key, never the kernel's bare EACCES or an EINVAL read as a size limit."""
    found = holder(kind, key) if exc.errno in (errno.EACCES, errno.EPERM, errno.EINVAL) else None
    if found is None:
        return translate(exc, what, key)
    name = "System V segment" if kind == "shm" else "semaphore set"
    shape = f"{found.size} bytes" if kind == "shm" else f"{found.size} semaphores"
    if kind == "sem" and exc.errno == errno.EINVAL:
        why = "it is not a set of PHP's 3 semaphores (another program's, or squatted)"
    else:
        why = "its mode does not let this user in"
    return UnsafeSegment(
        f"{what}: key {key} ({key & 0xFFFFFFFF:#010x}) is taken by a {name} of uid {found.uid} "
        f"(creator uid {found.cuid}, mode {found.mode:03o}, {shape}); {why}. Remove it "
        f"(ipcrm) if it is stale, or use another key",
        key=key,
        owner=found.uid,
        errno=exc.errno,
    )
