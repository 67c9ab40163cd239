"""The tmpfs backend: a segment is a directory, each variable a mapped file in it.

Layout under the root (default ``/dev/shm/shmfs-<uid>``, mode 0700)::

    <root>/<key>/.segment        metadata page (below) and the target of the segment's flock
    <root>/<key>/<index>         one file per variable (see varfile.py)
    <root>/<key>/.tmp-<pid>-<n>  a value being written into a new file; gone once renamed

``.segment`` is one page of 8-byte words: magic, version, key, size, perm, state, used bytes,
variable count, creation time, creator pid, generation. Writers update it under the lock; it is
never replaced, which is why the lock lives on it (locking a file that ``rename()`` replaces loses
updates: reliability.md, "Lost updates").

A segment is created whole in a hidden directory and published with one ``rename()``, so nobody
ever opens a half-made segment. A writer sets the DIRTY bit before it changes anything and clears
it after; a writer killed in between leaves it set, and the next process to take the lock removes
the dead writer's temporary files and recounts. ``destroy()`` marks the segment DESTROYED (every
open handle checks it), renames the directory away, then retires, zeroes and unlinks each file.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import time
from typing import Final, Self

from shmfs.backends import SegmentInfo, segment_full
from shmfs.backends.fsutil import (
    dir_mode,
    file_mode,
    open_dir,
    translate,
    verify_owner,
    writable_by_others,
)
from shmfs.backends.varfile import CONTENDED, PAGE, VarFile, capacity_for, create, read_length
from shmfs.errors import BackendUnavailable, CorruptSegment, SegmentNotFound, UnsafeSegment
from shmfs.forking import fork_epoch
from shmfs.locking import SegmentLock

__all__ = ["TmpfsBackend", "default_root"]

META_NAME: Final = ".segment"
META_MAGIC: Final = int.from_bytes(b"SHMFSSEG", "little")
META_VERSION: Final = 1
(_MAGIC, _VERSION, _KEY, _SIZE, _PERM, _STATE, _USED, _COUNT, _CREATED, _CREATOR, _GENERATION) = (
    range(11)
)
DESTROYED: Final = 1
DIRTY: Final = 2
# Mappings kept open per segment handle. Each is an entry in vm.max_map_count (65530) and, before
# Python 3.13 (mmap's trackfd=False), a file descriptor too; past this, the oldest are unmapped
# and reopened on demand (about 8 us).
MAX_MAPPINGS: Final = 256
# A value shrinking below a quarter of a slot this large gets a smaller file, so one huge value
# does not pin its memory after it is replaced by a small one.
_SHRINK_ABOVE: Final = 64 * 1024
_OPEN_RW: Final = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_RO: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_tokens = itertools.count()


def default_root() -> str:
    """The root used when neither ``root=`` nor ``SHMFS_ROOT`` names one."""
    return os.environ.get("SHMFS_ROOT") or f"/dev/shm/shmfs-{os.geteuid()}"


def _signed(word: int) -> int:
    return word - (1 << 64) if word >= 1 << 63 else word


def _index_of(name: str) -> int | None:
    if not name or name[0] == ".":
        return None
    try:
        return int(name)
    except ValueError:
        return None


def _open_root(root: str) -> int:
    """Open (creating it 0700 if absent) and verify the root directory."""
    try:
        fd = open_dir(root)
    except FileNotFoundError:
        try:
            os.mkdir(root, 0o700)
            os.chmod(root, 0o700, follow_symlinks=False)
        except FileExistsError:
            pass  # another process created it first; verified below like any other
        except FileNotFoundError as exc:
            raise BackendUnavailable(
                f"cannot create the shmfs root {root}: its parent does not exist "
                "(no /dev/shm here? set SHMFS_ROOT or root= to a tmpfs directory)"
            ) from exc
        except OSError as exc:
            raise translate(exc, f"cannot create the shmfs root {root}") from exc
        fd = open_dir(root)
    try:
        st = os.fstat(fd)
        if st.st_uid not in (os.geteuid(), 0):
            raise UnsafeSegment(
                f"shmfs root {root} is owned by uid {st.st_uid}; refusing it", owner=st.st_uid
            )
        if writable_by_others(st):
            raise UnsafeSegment(
                f"shmfs root {root} is writable by group or others (mode "
                f"{st.st_mode & 0o7777:04o}); use a private root (chmod 700) or another root="
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


class TmpfsBackend:
    """A segment stored as a directory of mapped files on tmpfs."""

    name = "tmpfs"
    native_codec = None
    lock_free_reads = True

    # Class-level defaults so close() works on an instance whose __init__ failed part way.
    _root_fd = -1
    _dir_fd = -1
    _meta_fd = -1
    _meta_mm: mmap.mmap | None = None
    _lock: SegmentLock | None = None

    def __init__(
        self, key: int, root: str, root_fd: int, dir_fd: int, trust_uids: frozenset[int]
    ) -> None:
        self._vars: dict[int, VarFile] = {}
        self.key = key
        self.root = root
        self.path = os.path.join(root, str(key))
        self._root_fd = root_fd
        self._dir_fd = dir_fd
        self._trust_uids = trust_uids
        self._epoch = fork_epoch()
        self._open_meta()
        self.size = int(self._meta[_SIZE])
        self.perm = int(self._meta[_PERM])
        dir_st = os.fstat(dir_fd)
        self.owner = dir_st.st_uid
        self._dir_trusted = dir_st.st_uid in trust_uids and not writable_by_others(dir_st)

    # ----------------------------------------------------------------- opening and creating

    @classmethod
    def open(
        cls, key: int, size: int, perm: int, *, root: str | None, trust_uids: frozenset[int]
    ) -> Self:
        """Open segment ``key`` under ``root``, creating it if absent."""
        root = root or default_root()
        root_fd = _open_root(root)
        try:
            for _ in range(100):
                dir_fd = cls._open_or_create_dir(root_fd, key, size, perm, trust_uids)
                if dir_fd is None:
                    continue  # lost a race with a destroy; try again
                try:
                    backend = cls(key, root, root_fd, dir_fd, trust_uids)
                except SegmentNotFound:
                    os.close(dir_fd)
                    continue  # destroyed while we opened it: attach makes a fresh one
                except BaseException:
                    os.close(dir_fd)
                    raise
                backend._recover_if_dirty()
                return backend
            raise CorruptSegment(f"segment {key}: could not open it after 100 attempts")
        except BaseException:
            os.close(root_fd)
            raise

    @staticmethod
    def _open_or_create_dir(
        root_fd: int, key: int, size: int, perm: int, trust_uids: frozenset[int]
    ) -> int | None:
        name = str(key)
        try:
            fd = open_dir(name, root_fd)
        except FileNotFoundError:
            fd = None
        if fd is None:
            if _publish_new_segment(root_fd, key, size, perm):
                return open_dir(name, root_fd)
            try:
                fd = open_dir(name, root_fd)
            except FileNotFoundError:
                return None
        try:
            verify_owner(os.fstat(fd), trust_uids, f"segment {key} directory")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_meta(self) -> None:
        try:
            fd = os.open(META_NAME, _OPEN_RW, dir_fd=self._dir_fd)
        except FileNotFoundError:
            raise SegmentNotFound(f"segment {self.key} was destroyed", key=self.key) from None
        except OSError as exc:
            raise translate(exc, f"cannot open segment {self.key}") from exc
        self._meta_fd = fd
        st = os.fstat(fd)
        verify_owner(st, self._trust_uids, f"segment {self.key} metadata")
        if st.st_size != PAGE:
            raise CorruptSegment(f"segment {self.key}: metadata is {st.st_size} bytes, not {PAGE}")
        self._meta_mm = mmap.mmap(fd, PAGE)
        self._meta = memoryview(self._meta_mm).cast("Q")
        if self._meta[_MAGIC] != META_MAGIC:
            raise CorruptSegment(f"segment {self.key}: metadata has a bad magic number")
        if self._meta[_VERSION] != META_VERSION:
            raise CorruptSegment(
                f"segment {self.key}: metadata version {self._meta[_VERSION]}; "
                f"this shmfs reads {META_VERSION} (upgrade shmfs)"
            )
        if self._meta[_STATE] & DESTROYED:
            raise SegmentNotFound(f"segment {self.key} was destroyed", key=self.key)
        self._lock = SegmentLock(fd, f"segment {self.key}")

    # ------------------------------------------------------------------------ lifecycle

    def _check(self) -> None:
        """Reopen what a fork shares with the parent; refuse a destroyed segment."""
        if self._epoch != fork_epoch():
            self._after_fork()
        if self._meta[_STATE] & DESTROYED:
            raise SegmentNotFound(f"segment {self.key} was destroyed", key=self.key)

    def _after_fork(self) -> None:
        # The child shares the parent's open file descriptions: an flock on them is the
        # parent's lock, and LOCK_UN from the child would release it. Open our own, and only
        # close (never unlock) the inherited ones. Mappings stay valid across fork.
        old_dir, old_meta = self._dir_fd, self._meta_fd
        self._dir_fd = open_dir(".", old_dir)
        self._meta_fd = os.open(META_NAME, _OPEN_RW, dir_fd=self._dir_fd)
        self._lock = SegmentLock(self._meta_fd, f"segment {self.key}")
        self._root_fd = open_dir(".", self._root_fd)
        for fd in (old_dir, old_meta):
            os.close(fd)
        self._epoch = fork_epoch()

    def close(self) -> None:
        """Unmap and close everything this handle opened. Idempotent."""
        for var in self._vars.values():
            var.close()
        self._vars.clear()
        if self._meta_mm is not None:
            try:
                self._meta.release()
                self._meta_mm.close()
            except BufferError:
                pass  # another thread still reads it; the GC unmaps it
            self._meta_mm = None
        for attr in ("_meta_fd", "_dir_fd", "_root_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)

    def destroy(self) -> None:
        """Mark destroyed, unpublish, then zero and remove every file. Lock held."""
        self._check()
        self._meta[_STATE] = self._meta[_STATE] | DESTROYED
        grave = f".dead-{self.key}-{os.getpid()}-{next(_tokens)}"
        try:
            os.rename(str(self.key), grave, src_dir_fd=self._root_fd, dst_dir_fd=self._root_fd)
        except FileNotFoundError:
            pass  # already unpublished by a destroy that died part way
        except OSError as exc:
            raise translate(exc, f"cannot destroy segment {self.key}") from exc
        for name in os.listdir(self._dir_fd):
            if name == META_NAME:
                continue
            if _index_of(name) is not None:
                self._scrub_file(name)
            os.unlink(name, dir_fd=self._dir_fd)
        os.unlink(META_NAME, dir_fd=self._dir_fd)
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(grave, dir_fd=self._root_fd)

    def _scrub_file(self, name: str) -> None:
        try:
            fd = os.open(name, _OPEN_RW, dir_fd=self._dir_fd)
        except FileNotFoundError:
            return
        try:
            var = VarFile(fd, writable=True, trusted=False)
        except CorruptSegment:
            return  # not ours to understand; it is unlinked all the same
        finally:
            os.close(fd)
        var.retire_and_scrub()
        var.close()

    # --------------------------------------------------------------------------- locking

    def acquire(self, timeout: float | None) -> None:
        """Take the segment lock; refuse a destroyed segment; repair after a dead writer."""
        self._check()
        assert self._lock is not None
        self._lock.acquire(timeout)
        state = self._meta[_STATE]
        if state & DESTROYED:
            self._lock.release()
            raise SegmentNotFound(f"segment {self.key} was destroyed", key=self.key)
        if state & DIRTY:
            self._recover()

    def release(self) -> None:
        """Release the segment lock."""
        assert self._lock is not None
        self._lock.release()

    def lock_held(self) -> bool:
        """Whether the calling thread holds the segment lock."""
        return self._lock is not None and self._lock.held

    def _recover_if_dirty(self) -> None:
        if self._meta[_STATE] & DIRTY:
            self.acquire(None)  # acquire() repairs
            self.release()

    def _recover(self) -> None:
        """A writer died holding the lock: drop its temp files, recount. Lock held."""
        used = count = 0
        for name in os.listdir(self._dir_fd):
            if name.startswith(".tmp-"):
                os.unlink(name, dir_fd=self._dir_fd)
            elif _index_of(name) is not None:
                fd = os.open(name, _OPEN_RO, dir_fd=self._dir_fd)
                try:
                    used += read_length(fd)
                finally:
                    os.close(fd)
                count += 1
        self._meta[_USED] = used
        self._meta[_COUNT] = count
        self._meta[_STATE] = self._meta[_STATE] & ~DIRTY

    # ------------------------------------------------------------------------- variables

    def _var(self, index: int) -> VarFile | None:
        """The mapping of ``index``, opened (and cached) if needed; ``None`` if absent."""
        var = self._vars.get(index)
        if var is not None and not var.retired:
            return var
        if var is not None:
            del self._vars[index]
            var.close()
        name = str(index)
        writable = True
        try:
            fd = os.open(name, _OPEN_RW, dir_fd=self._dir_fd)
        except FileNotFoundError:
            return None
        except PermissionError:
            writable = False  # another trusted user's segment we may only read
            try:
                fd = os.open(name, _OPEN_RO, dir_fd=self._dir_fd)
            except OSError as exc:
                raise translate(exc, f"segment {self.key}: cannot open index {index}") from exc
        except OSError as exc:
            raise translate(exc, f"segment {self.key}: cannot open index {index}") from exc
        try:
            st = os.fstat(fd)
            trusted = (
                self._dir_trusted and st.st_uid in self._trust_uids and not writable_by_others(st)
            )
            var = VarFile(fd, writable=writable, trusted=trusted)
        finally:
            os.close(fd)
        if len(self._vars) >= MAX_MAPPINGS:
            oldest = next(iter(self._vars))
            self._vars.pop(oldest).close()
        self._vars[index] = var
        return var

    def read(self, index: int) -> bytes | None:
        """Return the current bytes of ``index`` without taking the lock, or ``None``."""
        if self._epoch != fork_epoch():
            self._after_fork()
        var = self._vars.get(index)
        if var is not None:
            data = var.read()
            if data:
                return data
        for _ in range(3):
            var = self._var(index)
            if var is None:
                self._check()  # absent because destroyed? say so
                return None
            data = var.read()
            if data:
                return data
            if data == CONTENDED:
                break
        return self._read_locked(index)

    def _read_locked(self, index: int) -> bytes | None:
        self.acquire(None)
        try:
            var = self._var(index)
            return None if var is None else var.read()
        finally:
            self.release()

    def trusted(self, index: int) -> bool:
        """Whether only trusted uids could have written ``index``'s current file."""
        var = self._vars.get(index) or self._var(index)
        return var is not None and var.trusted

    def write(self, index: int, data: bytes) -> None:
        """Store ``data`` at ``index``: in place when it fits its slot, else in a new file."""
        self._check()
        meta = self._meta
        var = self._var(index)
        old = var.length if var is not None else 0
        used = meta[_USED]
        if used - old + len(data) > self.size:
            raise segment_full(self.key, index, len(data), self.size, used - old)
        if var is not None and not var.writable:
            raise UnsafeSegment(f"segment {self.key}: no write permission for index {index}")
        meta[_STATE] = meta[_STATE] | DIRTY
        if var is not None and _fits(var.capacity, len(data)):
            var.write(data)
        else:
            self._replace(index, data, var)
        meta[_USED] = used - old + len(data)
        if var is None:
            meta[_COUNT] = meta[_COUNT] + 1
        meta[_GENERATION] = meta[_GENERATION] + 1
        meta[_STATE] = meta[_STATE] & ~DIRTY

    def _replace(self, index: int, data: bytes, old: VarFile | None) -> None:
        """Publish ``data`` in a new file, then retire and zero the old one. Lock held."""
        capacity = capacity_for(len(data), old.capacity if old is not None else 0)
        if old is not None and len(data) * 4 < old.capacity:
            capacity = capacity_for(len(data))
        tmp = f".tmp-{os.getpid()}-{next(_tokens)}"
        try:
            create(self._dir_fd, tmp, data, file_mode(self.perm), capacity)
            os.rename(tmp, str(index), src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        except OSError as exc:
            self._meta[_STATE] = self._meta[_STATE] & ~DIRTY  # nothing changed
            raise translate(exc, f"segment {self.key}: cannot store index {index}") from exc
        if old is not None:
            old.retire_and_scrub()

    def delete(self, index: int) -> bool:
        """Unlink, retire and zero ``index``'s file; whether it existed. Lock held."""
        self._check()
        var = self._var(index)
        if var is None:
            return False
        meta = self._meta
        meta[_STATE] = meta[_STATE] | DIRTY
        length = var.length
        os.unlink(str(index), dir_fd=self._dir_fd)
        var.retire_and_scrub()
        del self._vars[index]
        var.close()
        meta[_USED] = meta[_USED] - length
        meta[_COUNT] = meta[_COUNT] - 1
        meta[_GENERATION] = meta[_GENERATION] + 1
        meta[_STATE] = meta[_STATE] & ~DIRTY
        return True

    def indices(self) -> list[int]:
        """Indices holding values, ascending."""
        self._check()
        found = (_index_of(name) for name in os.listdir(self._dir_fd))
        return sorted(index for index in found if index is not None)

    def count(self) -> int:
        """Number of variables."""
        self._check()
        return int(self._meta[_COUNT])

    def info(self) -> SegmentInfo:
        """Report on the segment."""
        self._check()
        meta = self._meta
        return SegmentInfo(
            key=self.key,
            backend=self.name,
            size=self.size,
            used=int(meta[_USED]),
            variables=int(meta[_COUNT]),
            perm=self.perm,
            owner=self.owner,
            location=self.path,
            created=meta[_CREATED] / 1e9,
            creator_pid=int(meta[_CREATOR]),
        )

    @classmethod
    def list_segments(cls, root: str | None) -> list[SegmentInfo]:
        """Report every readable segment under ``root``."""
        root = root or default_root()
        try:
            root_fd = open_dir(root)
        except FileNotFoundError:
            return []
        found = []
        try:
            for name in sorted(os.listdir(root_fd)):
                key = _index_of(name)
                if key is None:
                    continue
                info = _peek(root_fd, root, name, key)
                if info is not None:
                    found.append(info)
        finally:
            os.close(root_fd)
        return sorted(found, key=lambda info: info.key)


def _fits(capacity: int, length: int) -> bool:
    """Whether a value goes in place: it fits, and does not leave a big slot mostly empty."""
    return length <= capacity and not (capacity > _SHRINK_ABOVE and length * 4 < capacity)


def _publish_new_segment(root_fd: int, key: int, size: int, perm: int) -> bool:
    """Build segment ``key`` in a hidden directory and rename it into place.

    Returns whether we published it (``False``: another process got there first).
    """
    hidden = f".new-{key}-{os.getpid()}-{next(_tokens)}"
    try:
        os.mkdir(hidden, 0o700, dir_fd=root_fd)
        fd = open_dir(hidden, root_fd)
    except OSError as exc:
        raise translate(exc, f"cannot create segment {key}") from exc
    try:
        meta_fd = os.open(META_NAME, _OPEN_RW | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=fd)
        try:
            os.fchmod(meta_fd, file_mode(perm))
            os.posix_fallocate(meta_fd, 0, PAGE)
            words = memoryview(bytearray(PAGE)).cast("Q")
            words[_VERSION], words[_KEY], words[_SIZE], words[_PERM] = (
                META_VERSION,
                key & ((1 << 64) - 1),
                size,
                perm,
            )
            words[_CREATED], words[_CREATOR] = time.time_ns(), os.getpid()
            words[_MAGIC] = META_MAGIC
            os.pwrite(meta_fd, words.tobytes(), 0)
        finally:
            os.close(meta_fd)
        os.fchmod(fd, dir_mode(perm))
        try:
            os.rename(hidden, str(key), src_dir_fd=root_fd, dst_dir_fd=root_fd)
            return True
        except OSError:
            # ENOTEMPTY/EEXIST: someone published this key first; theirs wins.
            os.unlink(META_NAME, dir_fd=fd)
            os.rmdir(hidden, dir_fd=root_fd)
            return False
    except OSError as exc:
        raise translate(exc, f"cannot create segment {key}") from exc
    finally:
        os.close(fd)


def _peek(root_fd: int, root: str, name: str, key: int) -> SegmentInfo | None:
    """Read a segment's metadata without attaching; ``None`` if it cannot be read."""
    try:
        dir_fd = open_dir(name, root_fd)
    except (OSError, UnsafeSegment):
        return None
    try:
        st = os.fstat(dir_fd)
        fd = os.open(META_NAME, _OPEN_RO, dir_fd=dir_fd)
        try:
            raw = os.pread(fd, PAGE, 0)
        finally:
            os.close(fd)
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    words = memoryview(raw).cast("Q") if len(raw) == PAGE else None
    if words is None or words[_MAGIC] != META_MAGIC or words[_STATE] & DESTROYED:
        return None
    return SegmentInfo(
        key=_signed(words[_KEY]),
        backend=TmpfsBackend.name,
        size=int(words[_SIZE]),
        used=int(words[_USED]),
        variables=int(words[_COUNT]),
        perm=int(words[_PERM]),
        owner=st.st_uid,
        location=os.path.join(root, name),
        created=words[_CREATED] / 1e9,
        creator_pid=int(words[_CREATOR]),
    )
