"""Segment directories on tmpfs: the root, the metadata page, creating, peeking and wiping.

Layout under the root (default ``/dev/shm/shmfs-<uid>``, mode 0700)::

    <root>/<key>/.segment         metadata page (below); the segment lock is an flock on it
    <root>/<key>/.notify          written when someone waits for a change (notify.py)
    <root>/<key>/.index-<g>       the index: variable index -> where its value is (index.py)
    <root>/<key>/.slab-<c>-<n>    slots of size class c holding small variables (slabs.py)
    <root>/<key>/<index>          a variable too big for a slot, in a file of its own
                                  (largefile.py)
    <root>/<key>/.tmp-<pid>-<n>   a file being written, until renamed
    <root>/.new-<key>-<pid>-<n>   a segment being created, until renamed to <key>
    <root>/.dead-<key>-<pid>-<n>  a destroyed segment being wiped

``.segment`` is one page of 8-byte words (``layout.M_*``): magic, version, key, size, perm, state,
used bytes, variable count, creation time, creator pid, generation, number of waiters, number of
recoveries after dead writers, the current index's generation, the last slot stamp, from word 16
a table of the waiting processes' pids (so that waiters that died can be told from live ones),
and from word 80 each slot class's free list and bump allocation.
It is never replaced, which is why the lock lives on it: locking a file that ``rename()``
replaces loses updates (docs/linux-behaviour.md, "Lost updates").

A segment is built whole in a hidden ``.new-`` directory and published with one ``rename()``, so
nobody opens a half-made segment; it is unpublished the same way before it is wiped, so nobody
opens a half-wiped one.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import stat
import time
from typing import Final

from shmfs.backends import SegmentInfo
from shmfs.backends.fsutil import dir_mode, file_mode, open_dir, translate, writable_by_others
from shmfs.backends.tmpfs import layout as L
from shmfs.backends.tmpfs.index import create_index, index_name
from shmfs.backends.tmpfs.largefile import PAGE, VarFile
from shmfs.errors import BackendUnavailable, CorruptSegment, UnsafeSegment
from shmfs.forking import pid_alive

__all__ = [
    "META_NAME",
    "index_of",
    "make_views_file",
    "open_root",
    "peek",
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
VIEWS_NAME: Final = ".views"  # flocked shared by every handle with a view open
DESTROYED: Final = L.STATE_DESTROYED
DIRTY: Final = L.STATE_DIRTY
OPEN_RW: Final = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
OPEN_RO: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
# Hidden directories of a creator or destroyer that died are removed once their process is gone
# and they are this old; the age guards a live process in another PID namespace (a container
# sharing /dev/shm), whose pid we cannot see.
STALE_AFTER: Final = 60.0
_tokens = itertools.count()


def token() -> str:
    """A name part no other live process or earlier call of ours uses."""
    return f"{os.getpid()}-{next(_tokens)}"


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
    hidden = f".new-{key}-{token()}"
    try:
        os.mkdir(hidden, 0o700, dir_fd=root_fd)
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
    fd = os.open(NOTIFY_NAME, OPEN_RW | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dir_fd)
    try:
        os.fchmod(fd, file_mode(perm))
        os.posix_fallocate(fd, 0, 8)
    finally:
        os.close(fd)
    make_views_file(dir_fd, perm)
    create_index(dir_fd, index_name(0), 0, L.IX_MIN_SHIFT, mode=file_mode(perm))


def make_views_file(dir_fd: int, perm: int) -> None:
    """Create the empty file views flock (see ``TmpfsBackend.pin``), if it is not there."""
    fd = os.open(VIEWS_NAME, OPEN_RW | os.O_CREAT, 0o600, dir_fd=dir_fd)
    try:
        if os.fstat(fd).st_uid == os.geteuid():
            os.fchmod(fd, file_mode(perm))  # who may view is who may read the segment
    finally:
        os.close(fd)


def wipe_dir(dir_fd: int) -> None:
    """Zero every file that holds values in a segment directory, then unlink everything in it:
    a process that still maps one sees zeros, never the old values."""
    for name in os.listdir(dir_fd):
        if index_of(name) is not None:
            scrub_file(dir_fd, name)
        elif name.startswith((".slab-", ".index-")):
            zero_file(dir_fd, name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)


def zero_file(dir_fd: int, name: str) -> None:
    """Overwrite a file with zeros in place (never truncate: a process mapping it would get
    SIGBUS)."""
    try:
        fd = os.open(name, OPEN_RW, dir_fd=dir_fd)
    except (FileNotFoundError, PermissionError):
        return
    try:
        size = os.fstat(fd).st_size
        zeros = bytes(min(size, 1 << 20))
        for offset in range(0, size, len(zeros) or 1):
            os.pwrite(fd, zeros[: size - offset], offset)
    finally:
        os.close(fd)


def scrub_file(dir_fd: int, name: str) -> None:
    """Retire and zero one variable file, so a process still mapping it sees zeros."""
    try:
        fd = os.open(name, OPEN_RW, dir_fd=dir_fd)
    except FileNotFoundError:
        return
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


def sweep_root(root_fd: int) -> list[str]:
    """Remove hidden directories left by creators and destroyers that died; return their names."""
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
            age = now - os.stat(name, dir_fd=root_fd, follow_symlinks=False).st_mtime
        except (ValueError, IndexError, OSError):
            continue
        if age < STALE_AFTER or pid_alive(pid):
            continue
        with contextlib.suppress(OSError, UnsafeSegment):
            fd = open_dir(name, root_fd)
            try:
                wipe_dir(fd)
            finally:
                os.close(fd)
            os.rmdir(name, dir_fd=root_fd)
            removed.append(name)
    return removed


def peek(root_fd: int, root: str, name: str) -> SegmentInfo | None:  # noqa: PLR0911  # one per way it can fail
    """Read a segment's metadata without attaching; ``None`` if it cannot be read (or was
    destroyed). A segment whose metadata fails its checks is reported with ``damaged`` saying
    how, so that ``shmfs ls`` shows it and ``shmfs rm`` can remove it."""
    try:
        dir_fd = open_dir(name, root_fd)
    except (OSError, UnsafeSegment):
        return None
    try:
        st = os.fstat(dir_fd)
        try:
            fd = os.open(META_NAME, OPEN_RO, dir_fd=dir_fd)
        except FileNotFoundError:
            return _damaged(name, root, st, "its metadata file is missing")
        try:
            raw = os.pread(fd, PAGE, 0)
        finally:
            os.close(fd)
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    if len(raw) != PAGE:
        return _damaged(name, root, st, f"its metadata is {len(raw)} bytes, not {PAGE}")
    words = memoryview(raw).cast("Q")
    if words[STATE] & DESTROYED and words[MAGIC] == META_MAGIC:
        return None
    problem = None
    if words[MAGIC] != META_MAGIC:
        problem = "its metadata has a bad magic number"
    elif words[L.M_VERSION] != L.META_VERSION:
        problem = f"its metadata says format version {words[L.M_VERSION]}"
    elif words[KEY] != (index_of(name) or 0) & L.MASK64:
        problem = "its metadata names another key"
    if problem is not None:
        return _damaged(name, root, st, problem)
    key = words[KEY] - (1 << 64) if words[KEY] >= 1 << 63 else words[KEY]
    return SegmentInfo(
        key=int(key),
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


def _damaged(name: str, root: str, st: os.stat_result, problem: str) -> SegmentInfo | None:
    """The report of a segment whose metadata cannot be read: what its directory says."""
    key = index_of(name)
    if key is None:
        return None
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
