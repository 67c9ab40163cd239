"""``ftok``: a System V IPC key from a path and a project id, equal to C's and PHP's."""

from __future__ import annotations

import os

from shmfs.errors import InvalidArgument, InvalidKeyType

__all__ = ["ftok"]


def ftok(
    path: str | bytes | os.PathLike[str] | os.PathLike[bytes], proj_id: str | bytes | int
) -> int:
    """Return the System V IPC key glibc's ``ftok(3)`` and PHP's ``ftok()`` give for a file.

    The key is ``(st_ino & 0xffff) | (st_dev & 0xff) << 16 | (proj_id & 0xff) << 24`` from
    ``stat(2)`` (symlinks followed), read as a signed 32-bit ``key_t``: a project id of 0x80 or
    more gives a negative key (glibc ``sysvipc/ftok.c``; PHP ``ext/standard/ftok.c``).

    Only 16 bits of the inode and 8 bits of the device go into the key, so different files
    **collide**: on a Debian root file system ``/usr/share/doc/php8.2-common/README.md.gz``
    (inode 1441890) and ``/usr/share/postgresql-common/t/015_start_stop.t`` (inode 393314) both
    give ``ftok(..., "a") == 1627390050``. The key also changes when the file is replaced by a new
    inode (a deploy by rename), and it can be 0 (``IPC_PRIVATE``) with ``proj_id`` 0. Choose a
    stable file and a project id of your own, or pick keys explicitly.

    Bad arguments raise :class:`~shmfs.errors.InvalidArgument`, a ``ValueError`` as PHP's are, with
    PHP's messages; a file that cannot be stat'ed gives -1, as in C and PHP (PHP also warns
    ``ftok() failed - <strerror>``; :mod:`shmfs.php` does that, not this function).

    PHP: ``ftok(string $filename, string $project_id): int``.

    Args:
        path: The file or directory; ``str``, ``bytes`` or path-like, not empty, no NUL bytes.
        proj_id: One character (a ``str`` code point up to U+00FF, or one byte) or an ``int`` in
            0..255 (C's ``int proj_id``).

    Returns:
        The key, in ``-2**31 .. 2**31-1``, or -1 when ``stat`` fails (as in C, a file whose
        key really is -1 cannot be told from a failure).

    Raises:
        InvalidArgument: ``path`` is empty or holds a NUL byte, or ``proj_id`` is not one character
            or is outside 0..255.
        InvalidKeyType: ``path`` or ``proj_id`` has the wrong type.
    """
    try:
        raw = os.fsencode(path)
    except TypeError as exc:
        raise InvalidKeyType(
            f"ftok(): Argument #1 ($filename) must be a path, not {type(path).__name__}",
            path=path,
        ) from exc
    # PHP's order: the path's NUL check (zpp), then emptiness, then the project id.
    if b"\0" in raw:
        raise InvalidArgument(
            "ftok(): Argument #1 ($filename) must not contain any null bytes", path=path
        )
    if not raw:
        raise InvalidArgument("ftok(): Argument #1 ($filename) cannot be empty", path=path)
    proj = _project_byte(proj_id)
    try:
        st = os.stat(raw)  # stat(2), not lstat: glibc's ftok follows symlinks
    except OSError:
        return -1
    key = (st.st_ino & 0xFFFF) | ((st.st_dev & 0xFF) << 16) | (proj << 24)
    return key - (1 << 32) if key & 0x80000000 else key  # key_t is a signed 32-bit int


def _project_byte(proj_id: object) -> int:
    """Return ``proj_id`` as the byte C's ``ftok`` uses, or raise PHP's error."""
    if isinstance(proj_id, str):
        if len(proj_id) != 1 or ord(proj_id) > 0xFF:
            raise InvalidArgument(
                "ftok(): Argument #2 ($project_id) must be a single character "
                "(one str code point up to U+00FF, one byte, or an int 0..255)",
                proj_id=proj_id,
            )
        return ord(proj_id)
    if isinstance(proj_id, bytes | bytearray):
        if len(proj_id) != 1:
            raise InvalidArgument(
                "ftok(): Argument #2 ($project_id) must be a single character", proj_id=proj_id
            )
        return proj_id[0]
    if isinstance(proj_id, int) and not isinstance(proj_id, bool):
        if not 0 <= proj_id <= 0xFF:
            raise InvalidArgument(
                f"ftok(): Argument #2 ($project_id) must be within 0..255, got {proj_id}",
                proj_id=proj_id,
            )
        return proj_id
    raise InvalidKeyType(
        "ftok(): Argument #2 ($project_id) must be of type str, bytes or int, "
        f"{type(proj_id).__name__} given",
        proj_id=proj_id,
    )
