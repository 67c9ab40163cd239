"""Safe filesystem steps for the tmpfs backend: directories opened without following symlinks,
owners and modes checked, and ``OSError`` translated into shmfs errors.

``/dev/shm`` is world-writable and, on the machines we target, ``fs.protected_symlinks`` may be 0,
so the kernel does not stop us from following a link planted there (docs/linux-behaviour.md,
"Symlinks and squatting").
Every path below is opened relative to a directory descriptor we verified, with ``O_NOFOLLOW``.

A root or segment others can write to may hold anything they put there: every existing file
shmfs opens in one goes through :func:`open_file` (docs/security.md, "Files in a shared root").
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Container
from typing import Final

from shmfs.errors import (
    BackendUnavailable,
    SegmentFull,
    SegmentNotFound,
    ShmfsError,
    UnsafeSegment,
)

__all__ = [
    "check_file",
    "dir_mode",
    "file_mode",
    "lock_mode",
    "open_dir",
    "open_file",
    "translate",
    "verify_owner",
]

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A descriptor to reach into a directory without reading it: needs search (x) permission only,
# so a root shared as 0711 works for users who may not list it.
_PATH_FLAGS: Final = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


# O_NONBLOCK: opening a FIFO (or a device) someone put at the name must not wait for a writer.
# It is left set: on a regular file, which is all we go on with, it changes nothing.
_FILE_FLAGS: Final = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_file(
    name: str,
    dir_fd: int,
    *,
    write: bool,
    what: str,
    owners: Container[int] | None = None,
    single_link: bool = False,
) -> tuple[int, os.stat_result]:
    """Open an existing file of a root or segment, and check it before anything is read from
    it, acted on or zeroed: see :func:`check_file`. Returns the descriptor and its ``fstat``.

    Args:
        name: The file, relative to ``dir_fd``.
        dir_fd: A verified directory descriptor.
        write: Open it read-write, else read-only.
        what: The file, for messages.
        owners: When given, its owner must be one of these.
        single_link: It must have no other hard link (to zero it, see :func:`check_file`).

    Raises:
        UnsafeSegment: it is not a regular file, has other links, or the wrong owner.
        OSError: from ``open``: ``FileNotFoundError``, ``PermissionError``, ``ELOOP`` for a
            symlink.
    """
    fd = os.open(name, (os.O_RDWR if write else os.O_RDONLY) | _FILE_FLAGS, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        check_file(st, what, owners, single_link=single_link)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def check_file(
    st: os.stat_result,
    what: str,
    owners: Container[int] | None = None,
    *,
    single_link: bool = False,
) -> None:
    """Refuse anything but a regular file (owned by one of ``owners`` when given; with no
    other hard link if ``single_link``).

    One link, before zeroing: a hard link someone else made to one of our files (which
    ``fs.protected_hardlinks=0`` allows for files they cannot even read) would have us zero,
    through their name, what they cannot touch themselves. Not for reading or writing a value:
    that reaches the file's owner's own bytes whatever name it goes by, and refusing it would
    let anyone who can make a link lock the owner out of its own values.

    Raises:
        UnsafeSegment: it is not such a file.
    """
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeSegment(f"{what} is not a regular file; refusing it")
    if single_link and st.st_nlink != 1:
        raise UnsafeSegment(f"{what} has {st.st_nlink} hard links, not 1; refusing it")
    if owners is not None and st.st_uid not in owners:
        raise UnsafeSegment(f"{what} is owned by uid {st.st_uid}; refusing it", owner=st.st_uid)


def lock_mode(perm: int) -> int:
    """Mode of a file only writers may open (the lock, the views file): read and write for
    each class ``perm`` lets write, nothing for the others, so a reader cannot take a lock
    writers wait on."""
    write = perm & 0o222
    return write | write << 1


def file_mode(perm: int) -> int:
    """Mode of a variable or metadata file for a segment's ``perm``."""
    return perm & 0o666


def dir_mode(perm: int) -> int:
    """Mode of a segment directory: ``perm`` plus search permission wherever it grants read."""
    mode = perm & 0o666
    return mode | ((mode & 0o444) >> 2)


def open_dir(name: str, dir_fd: int | None = None, *, search_only: bool = False) -> int:
    """Open a directory without following a symlink at its last component.

    Args:
        name: The directory, relative to ``dir_fd`` when given.
        dir_fd: A verified directory descriptor.
        search_only: Return an ``O_PATH`` descriptor, good for ``*at()`` calls and ``fstat``
            but not for listing; it needs only search permission.

    Raises:
        FileNotFoundError: it does not exist.
        UnsafeSegment: it is a symlink or not a directory, or we may not open it.
    """
    try:
        return os.open(name, _PATH_FLAGS if search_only else _DIR_FLAGS, dir_fd=dir_fd)
    except (NotADirectoryError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        if isinstance(exc, NotADirectoryError) or exc.errno == errno.ELOOP:
            # O_DIRECTORY|O_NOFOLLOW on a symlink gives ENOTDIR, not ELOOP
            # (docs/linux-behaviour.md, "Symlinks and squatting").
            raise UnsafeSegment(f"{name} is a symlink or not a directory; refusing it") from exc
        raise translate(exc, f"cannot open {name}") from exc


def verify_owner(st: os.stat_result, trust_uids: frozenset[int], what: str) -> None:
    """Refuse ``what`` unless a trusted uid owns it.

    Raises:
        UnsafeSegment: another user owns it (squatting).
    """
    if st.st_uid not in trust_uids:
        raise UnsafeSegment(
            f"{what} is owned by uid {st.st_uid}, which is not trusted "
            f"(trusted: {sorted(trust_uids)}); refusing it (pass trust_uids= to allow)",
            owner=st.st_uid,
        )


def writable_by_others(st: os.stat_result) -> bool:
    """Whether group or others may write ``st``'s file (and so plant or change values)."""
    return bool(stat.S_IMODE(st.st_mode) & 0o022)


def translate(exc: OSError, what: str) -> ShmfsError:  # noqa: PLR0911  # a table of errno families
    """Turn an ``OSError`` into the shmfs error a caller can act on."""
    if isinstance(exc, ShmfsError):
        return exc  # already ours (UnsafeSegment, LockTimeout are OSErrors too)
    code = exc.errno
    reason = exc.strerror or str(exc)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return SegmentFull(
            f"{what}: the filesystem is full ({reason}). Free space in it, or give it more: "
            "docker run --shm-size=256m, or an emptyDir with a bigger sizeLimit",
            errno=code,
        )
    if code in (errno.EACCES, errno.EPERM):
        return UnsafeSegment(f"{what}: {reason}", errno=code)
    if code == errno.ELOOP:
        return UnsafeSegment(f"{what}: a symlink is in the way; refusing it", errno=code)
    if code == errno.ENOENT:
        return SegmentNotFound(f"{what}: {reason}", errno=code)
    if code in (errno.EROFS, errno.ENODEV, errno.ENOSYS):
        return BackendUnavailable(f"{what}: {reason}", errno=code)
    return ShmfsError(f"{what}: {reason}", errno=code)
