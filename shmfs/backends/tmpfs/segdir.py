"""Segment directories on tmpfs: the root, the metadata page, creating, peeking and wiping.

Layout under the root (default ``/dev/shm/shmfs-<uid>``, mode 0700)::

    <root>/<key>/.segment         metadata page (below)
    <root>/<key>/.lock            the segment lock is an flock on it; only writers may open it
    <root>/<key>/.notify          written when someone waits for a change (notify.py)
    <root>/<key>/.index-<g>       the index: variable index -> where its value is (index.py)
    <root>/<key>/.slab-<c>-<n>    slots of size class c holding small variables (slabs.py)
    <root>/<key>/<index>          a variable too big for a slot, in a file of its own
                                  (largefile.py)
    <root>/<key>/.views           flocked by handles that view values in place (views.py);
                                  only writers may open it
    <root>/<key>/.tmp-<pid>-<r>   a file being written, until renamed
    <root>/.new-<key>-<pid>-<r>   a segment being created, until renamed to <key>
    <root>/.dead-<key>-<pid>-<r>  a destroyed segment being wiped

``<r>`` is random (``secrets``), and each such name is created exclusively: in a shared root,
a name others can guess is a name they can take first.

``.segment`` is one page of 8-byte words (``layout.M_*``): magic, version, key, size, perm, state,
used bytes, variable count, creation time, creator pid, generation, number of waiters, number of
recoveries after dead writers, the current index's generation, the last slot stamp, from word 16
a table of the waiting processes' pids (so that waiters that died can be told from live ones),
and from word 80 each slot class's free list and bump allocation.
Neither it nor ``.lock`` is ever replaced: locking a file that ``rename()`` replaces loses
updates (docs/linux-behaviour.md, "Lost updates"). The lock is not on ``.segment`` itself
because every reader opens that, and an flock can be taken through any descriptor, a read-only
one too: a reader could then stop every writer. ``.lock`` is mode ``lock_mode(perm)``, read and
write for writers only, so nobody who may only read can open it, let alone lock it.

A segment's key is its directory's name; the key in the metadata must match it
(``listing.py``).

A segment is built whole in a hidden ``.new-`` directory and published with one ``rename()``, so
nobody opens a half-made segment; it is unpublished the same way before it is wiped, so nobody
opens a half-wiped one.

Its length (just over 400 lines): a segment directory's life from creation to wipe, whose steps
share the names and the opening rules above.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import time
from collections.abc import Callable
from typing import Final

from shmfs.backends.fsutil import (
    dir_mode,
    file_mode,
    lock_mode,
    open_dir,
    open_file,
    translate,
    writable_by_others,
)
from shmfs.backends.tmpfs import layout as L
from shmfs.backends.tmpfs.index import create_index, index_name
from shmfs.backends.tmpfs.largefile import PAGE, VarFile
from shmfs.errors import BackendUnavailable, CorruptSegment, ShmfsError, UnsafeSegment
from shmfs.forking import pid_alive

__all__ = [
    "LOCK_NAME",
    "META_NAME",
    "fresh_name",
    "index_of",
    "make_views_file",
    "may_act_on",
    "open_root",
    "publish_new_segment",
    "sweep_root",
    "wipe_dir",
]

META_NAME: Final = ".segment"
META_MAGIC: Final = L.META_MAGIC
META_VERSION: Final = L.META_VERSION
MAGIC, VERSION, KEY, SIZE, PERM = L.M_MAGIC, L.M_VERSION, L.M_KEY, L.M_SIZE, L.M_PERM
STATE, USED, COUNT, CREATED, CREATOR = L.M_STATE, L.M_USED, L.M_COUNT, L.M_CREATED, L.M_CREATOR
GENERATION, WAITERS, RECOVERIES, VIEWS = L.M_GENERATION, L.M_WAITERS, L.M_RECOVERIES, L.M_VIEWS
INDEX_GEN, STAMP = L.M_INDEX_GEN, L.M_STAMP
WAITER_TABLE: Final = range(L.M_WAITER_TABLE, L.M_WAITER_TABLE + L.M_WAITER_SLOTS)
NOTIFY_NAME: Final = ".notify"
LOCK_NAME: Final = ".lock"
VIEWS_NAME: Final = ".views"  # flocked shared by every handle with a view open
DESTROYED: Final = L.STATE_DESTROYED
DIRTY: Final = L.STATE_DIRTY
OPEN_RW: Final = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
OPEN_RO: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
# Hidden directories of a creator or destroyer that died are removed once their process is gone
# and they are this old; the age guards a live process in another PID namespace (a container
# sharing /dev/shm), whose pid we cannot see.
STALE_AFTER: Final = 60.0
# Fresh names tried for a hidden directory before giving up: with 64 random bits each, failing
# them all means something other than chance is at work.
NAME_ATTEMPTS: Final = 16
# rename() and mkdir() say a name is taken with these (EPERM, EACCES: someone else's directory
# in a sticky root).
_TAKEN: Final = (errno.EEXIST, errno.ENOTEMPTY, errno.EPERM, errno.EACCES, errno.ENOTDIR)


def token() -> str:
    """A name part nobody can predict: our pid (the sweep asks whether it is alive) and 64
    random bits."""
    return f"{os.getpid()}-{secrets.token_hex(8)}"


def fresh_name(prefix: str, dir_fd: int, take: Callable[[str], None], what: str) -> str:
    """Take a new hidden name ``prefix-<pid>-<random>`` in ``dir_fd`` with ``take`` (an
    exclusive mkdir, or a rename, which fails onto anything but an empty directory of ours),
    trying other names while someone else holds them; return the one taken.

    Raises:
        OSError: ``take`` failed otherwise, or every name tried was taken.
    """
    for _ in range(NAME_ATTEMPTS):
        name = f"{prefix}-{token()}"
        try:
            take(name)
        except OSError as exc:
            if exc.errno not in _TAKEN:
                raise
            if exc.errno in (errno.EPERM, errno.EACCES) and not _exists(dir_fd, name):
                raise  # a permission problem of our own, not someone else's name
            continue
        return name
    raise OSError(errno.EEXIST, f"{what}: {NAME_ATTEMPTS} fresh names were all taken")


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return True


def index_of(name: str) -> int | None:
    """The index (or key) a directory entry names, or ``None`` for our hidden files."""
    if not name or name[0] == ".":
        return None
    try:
        return int(name)
    except ValueError:
        return None


def open_root(root: str, trust_uids: frozenset[int]) -> int:
    """Open (creating it 0700 if absent) and verify the root directory.

    Args:
        root: The root's path.
        trust_uids: Its owner must be one of these (this user and root, unless widened).

    Raises:
        UnsafeSegment: a symlink, an untrusted user's, or writable by group or others.
        BackendUnavailable: its parent does not exist (no /dev/shm here).
    """
    try:
        fd = open_dir(root, search_only=True)
    except FileNotFoundError:
        try:
            os.mkdir(root, 0o700)
            os.chmod(root, 0o700, follow_symlinks=False)  # the umask must not widen it
        except FileExistsError:
            pass  # created by someone else meanwhile: verified below like any other
        except FileNotFoundError as exc:
            raise BackendUnavailable(
                f"cannot create the shmfs root {root}: its parent does not exist "
                "(no /dev/shm here? set SHMFS_ROOT or root= to a directory on tmpfs)"
            ) from exc
        except OSError as exc:
            raise translate(exc, f"cannot create the shmfs root {root}") from exc
        fd = open_dir(root, search_only=True)
    try:
        st = os.fstat(fd)
        if st.st_uid not in trust_uids:
            raise UnsafeSegment(
                f"shmfs root {root} is owned by uid {st.st_uid}, which is not trusted "
                f"(trusted: {sorted(trust_uids)}); refusing it (pass trust_uids= to allow)",
                owner=st.st_uid,
            )
        if writable_by_others(st) and not st.st_mode & stat.S_ISVTX:
            # Others could rename our segments away and put theirs in their place. A sticky
            # directory (like /dev/shm itself, mode 1777) forbids that: choosing one is asking
            # to share the root, and squatted names are still refused by their owner.
            raise UnsafeSegment(
                f"shmfs root {root} is writable by group or others (mode "
                f"{st.st_mode & 0o7777:04o}) without the sticky bit; use a private root "
                "(chmod 700), a sticky shared one (chmod 1777), or another root="
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def publish_new_segment(root_fd: int, key: int, size: int, perm: int) -> bool:
    """Build segment ``key`` in a hidden directory and rename it into place.

    Returns whether we published it (``False``: another process got there first).

    Raises:
        SegmentFull: the filesystem is full.
        UnsafeSegment: no permission.
    """
    sweep_root(root_fd)
    try:
        hidden = fresh_name(
            f".new-{key}",
            root_fd,
            lambda name: os.mkdir(name, 0o700, dir_fd=root_fd),
            f"cannot create segment {key}",
        )
        fd = open_dir(hidden, root_fd)
    except OSError as exc:
        raise translate(exc, f"cannot create segment {key}") from exc
    try:
        _write_meta(fd, key, size, perm)
        os.fchmod(fd, dir_mode(perm))
        try:
            os.rename(hidden, str(key), src_dir_fd=root_fd, dst_dir_fd=root_fd)
            return True
        except OSError:
            pass  # ENOTEMPTY/EEXIST: someone published this key first; theirs wins
        wipe_dir(fd)
        os.rmdir(hidden, dir_fd=root_fd)
        return False
    except OSError as exc:
        with contextlib.suppress(OSError):
            wipe_dir(fd)
            os.rmdir(hidden, dir_fd=root_fd)
        raise translate(exc, f"cannot create segment {key}") from exc
    finally:
        os.close(fd)


def _create(dir_fd: int, name: str, mode: int, length: int) -> None:
    """Create ``name`` (it must not exist), ``mode`` whatever the umask, ``length`` bytes."""
    fd = os.open(name, OPEN_RW | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)
        if length:
            os.posix_fallocate(fd, 0, length)
    finally:
        os.close(fd)


def _write_meta(dir_fd: int, key: int, size: int, perm: int) -> None:
    fd = os.open(META_NAME, OPEN_RW | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dir_fd)
    try:
        os.fchmod(fd, file_mode(perm))
        os.posix_fallocate(fd, 0, PAGE)
        words = memoryview(bytearray(PAGE)).cast("Q")
        words[VERSION], words[KEY], words[SIZE], words[PERM] = (
            META_VERSION,
            key & ((1 << 64) - 1),
            size,
            perm,
        )
        words[CREATED], words[CREATOR] = time.time_ns(), os.getpid()
        words[MAGIC] = META_MAGIC
        if os.pwrite(fd, words.tobytes(), 0) != PAGE:
            raise OSError(28, "short write of segment metadata")
    finally:
        os.close(fd)
    _create(dir_fd, NOTIFY_NAME, file_mode(perm), 8)
    _create(dir_fd, LOCK_NAME, lock_mode(perm), 0)
    make_views_file(dir_fd, perm)
    create_index(dir_fd, index_name(0), 0, L.IX_MIN_SHIFT, mode=file_mode(perm))


def make_views_file(dir_fd: int, perm: int) -> None:
    """Create the empty file views flock (``views.py``), for writers alone, unless it is
    there."""
    with contextlib.suppress(FileExistsError):
        _create(dir_fd, VIEWS_NAME, lock_mode(perm), 0)


def wipe_dir(dir_fd: int, owner: int | None = None) -> None:
    """Zero every file that holds values in a segment directory, then unlink everything in it:
    a process that still maps one sees zeros, never the old values.

    Only regular files with no other link are zeroed, and only ``owner``'s when given (the
    sweep, in a directory someone else may have filled): zeroing anything else could reach
    someone else's data through a hard link. Everything is unlinked all the same. What cannot
    be removed (a directory someone else put in a segment others may write) is left: the
    caller's ``rmdir`` then fails, and the directory, already unpublished, stays.
    """
    for name in os.listdir(dir_fd):
        if index_of(name) is not None:
            scrub_file(dir_fd, name, owner)
        elif name.startswith((".slab-", ".index-")):
            zero_file(dir_fd, name, owner)
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)


def zero_file(dir_fd: int, name: str, owner: int | None) -> None:
    """Overwrite a file with zeros in place (never truncate: a process mapping it would get
    SIGBUS), if it is a regular file with no other link, and ``owner``'s unless that is
    ``None``."""
    opened = _open_to_wipe(dir_fd, name, owner)
    if opened is None:
        return
    fd, st = opened
    try:
        _zero_data(fd, st.st_size)
    finally:
        os.close(fd)


def _open_to_wipe(dir_fd: int, name: str, owner: int | None) -> tuple[int, os.stat_result] | None:
    """``name`` opened for writing if a wipe may write it (a regular file with one link, and
    ``owner``'s unless that is ``None``), else ``None``: what is not ours to zero is only
    unlinked."""
    try:
        return open_file(
            name,
            dir_fd,
            write=True,
            what=name,
            owners=None if owner is None else (owner,),
            single_link=True,
        )
    except (OSError, UnsafeSegment):
        return None


def _zero_data(fd: int, size: int) -> None:
    """Zero the bytes of ``fd`` that hold data, leaving its holes alone: every file shmfs makes
    is allocated whole, and writing zeros into a planted sparse file's holes would fill tmpfs
    with them."""
    zeros = bytes(min(size, 1 << 20))
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: no data past offset
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        while start < end:
            start += os.pwrite(fd, zeros[: end - start], start)
        offset = end


def scrub_file(dir_fd: int, name: str, owner: int | None) -> None:
    """Retire and zero one variable file, so a process still mapping it sees zeros; only a
    regular file with no other link, and ``owner``'s unless that is ``None``."""
    opened = _open_to_wipe(dir_fd, name, owner)
    if opened is None:
        return
    fd = opened[0]
    try:
        var = VarFile(fd, writable=True, trusted=False)
    except CorruptSegment:
        return  # not a variable file we understand; it is unlinked all the same
    finally:
        os.close(fd)
    try:
        var.retire_and_scrub()
    finally:
        var.close()


def may_act_on(st: os.stat_result) -> bool:
    """Whether this process may remove or wipe what ``st`` describes: its own, or anyone's
    for root. In a shared root, another user's directory is theirs to clean."""
    euid = os.geteuid()
    return euid in (0, st.st_uid)


def sweep_root(root_fd: int) -> list[str]:
    """Remove hidden directories left by creators and destroyers that died, ours alone (every
    user's for root); return their names."""
    removed: list[str] = []
    now = time.time()
    try:
        listing = open_dir(".", root_fd)
    except (OSError, UnsafeSegment):
        return removed  # a shared root we may not list: its owner sweeps it
    try:
        names = os.listdir(listing)
    finally:
        os.close(listing)
    for name in names:
        if not name.startswith((".new-", ".dead-")):
            continue
        try:
            pid = int(name.rsplit("-", 2)[1])
            st = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
        except (ValueError, IndexError, OSError):
            continue
        if not may_act_on(st) or now - st.st_mtime < STALE_AFTER or pid_alive(pid):
            continue
        with contextlib.suppress(OSError, ShmfsError):
            fd = open_dir(name, root_fd)
            try:
                if not _same(os.fstat(fd), st):
                    continue  # replaced since we looked
                wipe_dir(fd, st.st_uid)
            finally:
                os.close(fd)
            os.rmdir(name, dir_fd=root_fd)
            removed.append(name)
    return removed


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino, a.st_uid) == (b.st_dev, b.st_ino, b.st_uid)
