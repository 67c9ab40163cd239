"""What a root holds: which of its entries are segments, and what each reports without being
attached (``shmfs ls``, ``shmfs gc``, ``shmfs.segments()``).

A segment's key is its directory's name, and the metadata must name the same key: a metadata
page copied into a directory of another name (another user's, in a shared root) would otherwise
have ``gc`` act on the segment it names, which is not the one it sits in. The metadata is opened
as every file of a segment is (``fsutil.open_file``): a FIFO put in its place is refused, not
waited on.
"""

from __future__ import annotations

import os
import stat

from shmfs.backends import SegmentInfo
from shmfs.backends.fsutil import open_dir, open_file
from shmfs.backends.tmpfs import layout as L
from shmfs.backends.tmpfs.largefile import PAGE
from shmfs.backends.tmpfs.segdir import (
    COUNT,
    CREATED,
    CREATOR,
    DESTROYED,
    KEY,
    MAGIC,
    META_MAGIC,
    META_NAME,
    PERM,
    SIZE,
    STATE,
    USED,
    index_of,
)
from shmfs.errors import CorruptSegment, ShmfsError, UnsafeSegment

__all__ = ["check_key", "key_of", "peek", "read_meta"]


def key_of(name: str) -> int | None:
    """The key a root's entry names, or ``None`` if it names no segment (a key is a non-zero
    signed 32-bit number, written as ``str(key)`` writes it)."""
    key = index_of(name)
    if key is None or key == 0 or not -(1 << 31) <= key < 1 << 31 or str(key) != name:
        return None
    return key


def read_meta(dir_fd: int, key: int, what: str) -> bytes:
    """The metadata page of segment ``key``'s directory, checked: a regular file with one link,
    holding segment ``key``.

    Raises:
        UnsafeSegment: not a regular file, or it names another key.
        CorruptSegment: not a whole metadata page.
        OSError: from the filesystem.
    """
    fd, _ = open_file(META_NAME, dir_fd, write=False, what=f"{what} metadata")
    try:
        raw = os.pread(fd, PAGE, 0)
    finally:
        os.close(fd)
    if len(raw) != PAGE or memoryview(raw).cast("Q")[MAGIC] != META_MAGIC:
        raise CorruptSegment(f"{what}: its metadata is not a shmfs metadata page")
    check_key(memoryview(raw).cast("Q"), key, what)
    return raw


def check_key(words: memoryview, key: int, what: str) -> None:
    """Refuse metadata that names another key than the directory it is in.

    Raises:
        UnsafeSegment: it does.
    """
    if words[KEY] != key & ((1 << 64) - 1):
        claimed = words[KEY] - (1 << 64) if words[KEY] >> 63 else words[KEY]
        raise UnsafeSegment(
            f"{what}: its metadata claims key {claimed}; a segment's key is its directory's "
            "name, so refusing it"
        )


def peek(root_fd: int, root: str, name: str) -> SegmentInfo | None:  # noqa: PLR0911  # one per way it can fail
    """Read a segment's metadata without attaching; ``None`` if it cannot be read, was
    destroyed, or is not a segment (a name that is no key, a directory or metadata that is not
    what it should be: a symlink, a FIFO). A segment whose metadata fails its checks, naming
    another key included, is reported under its directory's name with ``damaged`` saying how,
    so that ``shmfs ls`` shows it and ``shmfs rm`` can remove it; it has no creator, so ``gc``
    never takes it for a dead process's segment."""
    key = key_of(name)
    if key is None:
        return None
    try:
        dir_fd = open_dir(name, root_fd, search_only=True)
    except (OSError, UnsafeSegment):
        return None
    try:
        st = os.fstat(dir_fd)
        try:
            fd, _ = open_file(META_NAME, dir_fd, write=False, what=f"segment {name} metadata")
        except FileNotFoundError:
            return _damaged(key, root, name, st, "its metadata file is missing")
        try:
            raw = os.pread(fd, PAGE, 0)
        finally:
            os.close(fd)
    except (OSError, ShmfsError):
        return None
    finally:
        os.close(dir_fd)
    if len(raw) != PAGE:
        return _damaged(key, root, name, st, f"its metadata is {len(raw)} bytes, not {PAGE}")
    words = memoryview(raw).cast("Q")
    if words[STATE] & DESTROYED and words[MAGIC] == META_MAGIC:
        return None
    problem = None
    if words[MAGIC] != META_MAGIC:
        problem = "its metadata has a bad magic number"
    elif words[L.M_VERSION] != L.META_VERSION:
        problem = f"its metadata says format version {words[L.M_VERSION]}"
    elif words[KEY] != key & L.MASK64:
        problem = "its metadata names another key"
    if problem is not None:
        return _damaged(key, root, name, st, problem)
    return SegmentInfo(
        key=key,
        backend="tmpfs",
        size=int(words[SIZE]),
        used=int(words[USED]),
        variables=int(words[COUNT]),
        perm=int(words[PERM]),
        owner=st.st_uid,
        location=os.path.join(root, name),
        created=words[CREATED] / 1e9,
        creator_pid=int(words[CREATOR]),
    )


def _damaged(key: int, root: str, name: str, st: os.stat_result, problem: str) -> SegmentInfo:
    """The report of a segment whose metadata cannot be read: what its directory says."""
    return SegmentInfo(
        key=key,
        backend="tmpfs",
        size=0,
        used=0,
        variables=0,
        perm=stat.S_IMODE(st.st_mode) & 0o666,
        owner=st.st_uid,
        location=os.path.join(root, name),
        created=st.st_mtime,
        damaged=problem,
    )
