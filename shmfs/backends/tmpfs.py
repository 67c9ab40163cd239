"""The tmpfs backend: a segment is a directory, each variable a mapped file in it.

The directory layout and its lifecycle are in ``segdir.py``; the variable file format, and why
it is written in place, in ``varfile.py``. This module ties them to the Backend protocol: it
caches mappings (past ``MAX_MAPPINGS``, variables are read with pread and written with pwrite
instead), keeps the metadata page's counters, pins values for zero-copy views, and recovers
after a writer that died.

A writer sets the DIRTY bit in the metadata, with its pid, before it changes anything and
clears it after; a writer killed in between leaves it set, and the next process to take the
lock (or a reader that finds the pid dead) removes the dead writer's temporary files and
recounts. ``destroy()`` marks the segment DESTROYED (every handle
checks it), renames the directory away, then retires, zeroes and unlinks each file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import resource
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Final, Self

from shmfs.backends import SegmentInfo, refuse_options, segment_full
from shmfs.backends import segdir as sd
from shmfs.backends.fsutil import file_mode, open_dir, translate, verify_owner, writable_by_others
from shmfs.backends.varfile import (
    CONTENDED,
    MAP_IT,
    PAGE,
    VarFile,
    capacity_for,
    create,
    read_length,
    read_unmapped,
    unmapped_state,
    write_unmapped,
)
from shmfs.errors import CorruptSegment, SegmentNotFound, ShmfsError, UnsafeSegment
from shmfs.forking import fork_epoch, pid_alive
from shmfs.frame import Pieces, Split
from shmfs.hotpath import Hot, maps_without_descriptors, new_hot
from shmfs.locking import HoldsSegmentLock, SegmentLock
from shmfs.notify import FileWatch

__all__ = ["MAX_MAPPINGS", "PROCESS_MAPPINGS", "TmpfsBackend", "default_root"]


def _max_mappings() -> int:
    """Mappings kept open per segment handle. Each is an entry in vm.max_map_count (65530) and,
    where mappings keep a file descriptor (Python before 3.13 without the C module), a
    descriptor too: there, a sixteenth of the process's descriptor limit when this module is
    imported, and at least 256 (a limit of 1024, the common default, gives 256; containers
    often allow a million, which gives the cap)."""
    if maps_without_descriptors():
        return _MAPPINGS_CAP
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return _MAPPINGS_CAP
    return max(256, min(_MAPPINGS_CAP, soft // 16))


def _process_mappings() -> int:
    """Mappings of variable files kept by all of a process's handles together: half of
    vm.max_map_count (65530 by default), the rest being the process's own (its heap, its
    libraries, numpy's arrays)."""
    try:
        with open("/proc/sys/vm/max_map_count", encoding="ascii") as limit:
            return max(_MAPPINGS_CAP, int(limit.read()) // 2)
    except (OSError, ValueError):
        return 2 * _MAPPINGS_CAP


_MAPPINGS_CAP: Final = 16384
MAX_MAPPINGS: Final = _max_mappings()
PROCESS_MAPPINGS: Final = _process_mappings()
# Once the mappings are all taken, other variables are read with pread; one read this many times
# among the last _MISS_MEMORY such reads is mapped (in place of the oldest mapping).
_ADMIT_AFTER: Final = 8
_MISS_MEMORY: Final = 4 * MAX_MAPPINGS
# The metadata words the read path checks, bound once (a module attribute lookup per read adds up).
_STATE, _DIRTY, _RECOVERIES = sd.STATE, sd.DIRTY, sd.RECOVERIES
_USED, _COUNT, _GENERATION, _WAITERS = sd.USED, sd.COUNT, sd.GENERATION, sd.WAITERS
_VIEWS: Final = sd.VIEWS
_DESTROYED: Final = sd.DESTROYED
# Attempts to open a segment that keeps being destroyed under us before giving up.
_OPEN_ATTEMPTS: Final = 100


def default_root() -> str:
    """The root used when neither ``root=`` nor ``SHMFS_ROOT`` names one."""
    return os.environ.get("SHMFS_ROOT") or f"/dev/shm/shmfs-{os.geteuid()}"


class TmpfsBackend(HoldsSegmentLock):
    """A segment stored as a directory of mapped files on tmpfs."""

    name = "tmpfs"
    native_codec = None
    lock_free_reads = True
    writes_pieces = True  # a large value is copied into its slot once, not joined first
    trust_option = "trust_uids="

    # Class-level defaults so close() works on an instance whose __init__ failed part way.
    _root_fd = -1
    _dir_fd = -1
    _meta_fd = -1
    _notify_fd = -1
    _views_fd = -1  # flocked LOCK_SH while this handle has views open
    _probe_fd = -1  # writers test, through this one, whether any handle has views open
    _views = 0  # views this handle has open
    _meta_mm: mmap.mmap | None = None
    _lock: SegmentLock | None = None
    #: The C get and put of small values (shmfs.hotpath), or None: pure Python, or closed.
    hot: Hot | None = None
    # Replaced per instance before any use.
    _vars: OrderedDict[int, VarFile] = OrderedDict()  # noqa: RUF012

    def __init__(
        self, key: int, root: str, root_fd: int, dir_fd: int, trust_uids: frozenset[int]
    ) -> None:
        self._vars = OrderedDict()
        # index -> recent accesses without a mapping. OrderedDicts, because both are trimmed
        # from the oldest end: a dict's first key is found by skipping every deleted slot
        # before it, which made each trim cost up to a microsecond.
        self._misses: OrderedDict[int, int] = OrderedDict()
        self._absent: dict[int, int] = {}  # index -> GENERATION when it had no file
        self._unmapped = threading.local()  # .last: (index, trusted) of the last pread read
        self.key = key
        self.root = root
        self.path = os.path.join(root, str(key))
        self._root_fd = root_fd
        self._dir_fd = dir_fd
        self._trust_uids = trust_uids
        self._epoch = fork_epoch()
        self._dirty_tag = _dirty_tag()
        try:
            self._open_meta()
        except BaseException:
            self._dir_fd = self._root_fd = -1  # the caller owns these until we succeed
            self.close()
            raise
        self._recoveries = self._meta[sd.RECOVERIES]
        self.hot = new_hot(self._vars, self._meta)
        self._reset_hot()
        self.size = int(self._meta[sd.SIZE])
        self.perm = int(self._meta[sd.PERM])
        dir_st = os.fstat(dir_fd)
        self.owner = dir_st.st_uid
        self._dir_trusted = dir_st.st_uid in trust_uids and not writable_by_others(dir_st)

    # ------------------------------------------------------------ opening and closing

    @classmethod
    def open(
        cls,
        key: int,
        size: int,
        perm: int,
        *,
        root: str | None,
        trust_uids: frozenset[int],
        **options: Any,
    ) -> Self:
        """Open segment ``key`` under ``root``, creating it if absent."""
        refuse_options(cls.name, options)
        root = root or default_root()
        root_fd = sd.open_root(root)
        try:
            for _ in range(_OPEN_ATTEMPTS):
                dir_fd = _open_or_create_dir(root_fd, key, size, perm, trust_uids)
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
                try:
                    backend._recover_if_dirty()
                except BaseException:
                    backend.close()
                    raise
                return backend
            raise CorruptSegment(f"segment {key}: could not open it after {_OPEN_ATTEMPTS} tries")
        except BaseException:
            if root_fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(root_fd)
            raise

    def _open_meta(self) -> None:
        try:
            fd = os.open(sd.META_NAME, sd.OPEN_RW, dir_fd=self._dir_fd)
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
        if self._meta[sd.MAGIC] != sd.META_MAGIC:
            raise CorruptSegment(f"segment {self.key}: metadata has a bad magic number")
        if self._meta[sd.VERSION] != sd.META_VERSION:
            raise CorruptSegment(
                f"segment {self.key}: metadata version {self._meta[sd.VERSION]}; "
                f"this shmfs reads {sd.META_VERSION} (upgrade shmfs)"
            )
        if self._meta[sd.STATE] & sd.DESTROYED:
            raise SegmentNotFound(f"segment {self.key} was destroyed", key=self.key)
        self._lock = SegmentLock(fd, f"segment {self.key}")

    def _check(self) -> None:
        """Reopen what a fork shares with the parent; refuse a destroyed segment."""
        if self._epoch != fork_epoch():
            self._after_fork()
        if self._meta[sd.STATE] & sd.DESTROYED:
            raise SegmentNotFound(f"segment {self.key} was destroyed", key=self.key)

    def _after_fork(self) -> None:
        # The child shares the parent's open file descriptions: an flock on them is the
        # parent's lock, and LOCK_UN from the child would release it. Open our own, and only
        # close (never unlock) the inherited ones. Mappings stay valid across fork.
        inherited = (
            self._dir_fd,
            self._meta_fd,
            self._root_fd,
            self._notify_fd,
            self._views_fd,
            self._probe_fd,
        )
        try:
            self._dir_fd = open_dir(".", inherited[0])
            self._meta_fd = os.open(sd.META_NAME, sd.OPEN_RW, dir_fd=self._dir_fd)
            self._root_fd = open_dir(".", inherited[2], search_only=True)
        except OSError as exc:
            raise translate(exc, f"segment {self.key}: cannot reopen after fork") from exc
        self._lock = SegmentLock(self._meta_fd, f"segment {self.key}")
        self._notify_fd = self._views_fd = self._probe_fd = -1
        self._views = 0  # the parent's views are the parent's: its flock stays with it
        for fd in inherited:
            if fd >= 0:
                os.close(fd)
        self._epoch = fork_epoch()
        self._dirty_tag = _dirty_tag()
        self._reset_hot()

    def _reset_hot(self) -> None:
        """Tell the C fast path the lock, recovery count and DIRTY word it must use now."""
        if self.hot is not None:
            self.hot.reset(self._lock, self._recoveries, self._dirty_tag)

    def _drop_mappings(self) -> None:
        """Unmap every variable. The dict is emptied in place: the C fast path holds it."""
        vars_ = list(self._vars.values())
        self._vars.clear()
        for var in vars_:
            var.close()

    def close(self) -> None:
        """Unmap and close everything this handle opened. Idempotent."""
        if self.hot is not None:
            self.hot.close()
            self.hot = None
        self._drop_mappings()
        if self._meta_mm is not None:
            try:
                self._meta.release()
                self._meta_mm.close()
            except BufferError:
                pass  # another thread still reads it; the GC unmaps it
            self._meta_mm = None
        for attr in ("_views_fd", "_probe_fd", "_notify_fd", "_meta_fd", "_dir_fd", "_root_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                setattr(self, attr, -1)
                with contextlib.suppress(OSError):
                    os.close(fd)

    def destroy(self) -> None:
        """Mark destroyed, unpublish, then zero and remove every file. Lock held."""
        self._check()
        self._meta[sd.STATE] = self._meta[sd.STATE] | sd.DESTROYED
        self._notify()  # waiters wake up and find the segment gone
        grave = f".dead-{self.key}-{sd.token()}"
        try:
            with contextlib.suppress(FileNotFoundError):  # a destroy that died got that far
                os.rename(str(self.key), grave, src_dir_fd=self._root_fd, dst_dir_fd=self._root_fd)
            sd.wipe_dir(self._dir_fd)
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(grave, dir_fd=self._root_fd)
        except OSError as exc:
            # Already unpublished and marked: what is left is swept like a dead destroyer's.
            raise translate(exc, f"cannot finish destroying segment {self.key}") from exc
        self._drop_mappings()

    # ------------------------------------------------------------------------ locking

    def acquire(self, timeout: float | None) -> None:
        """Take the segment lock; refuse a destroyed segment; repair after a dead writer."""
        self._check()
        assert self._lock is not None
        self._lock.acquire(timeout)
        state = self._meta[sd.STATE]
        if state & sd.DESTROYED:
            self._lock.release()
            raise SegmentNotFound(f"segment {self.key} was destroyed", key=self.key)
        if state & sd.DIRTY:
            try:
                self._recover()
            except BaseException:
                self._lock.release()
                raise
        if self._meta[sd.RECOVERIES] != self._recoveries:
            self._forget_mappings()

    def _forget_mappings(self) -> None:
        """Drop every cached mapping: a writer died between publishing a file and retiring
        the one it replaced, so a mapping we hold may be of a file no longer in the segment."""
        self._drop_mappings()
        self._absent.clear()
        self._recoveries = self._meta[sd.RECOVERIES]
        self._reset_hot()

    def _recover_if_dirty(self) -> None:
        if self._meta[sd.STATE] & sd.DIRTY:
            self.acquire(None)  # acquire() repairs
            self.release()

    def _recover_if_abandoned(self) -> None:
        """DIRTY and the lock free: the writer died, so repair now rather than wait for the
        next writer (a reader's cached mapping may be of a file its death left replaced)."""
        assert self._lock is not None
        if self._lock.try_lock():
            try:
                if self._meta[sd.STATE] & sd.DIRTY:
                    self._recover()
            finally:
                self._lock.release()

    def _recover(self) -> None:
        """A writer died (or failed) mid-change: drop temp files, recount. Lock held."""
        used = count = 0
        try:
            for name in os.listdir(self._dir_fd):
                if name.startswith(".tmp-"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=self._dir_fd)
                elif sd.index_of(name) is not None:
                    fd = os.open(name, sd.OPEN_RO, dir_fd=self._dir_fd)
                    try:
                        used += read_length(fd)
                    finally:
                        os.close(fd)
                    count += 1
        except OSError as exc:
            raise translate(
                exc, f"segment {self.key}: cannot recover after a failed write"
            ) from exc
        self._meta[sd.USED] = used
        self._meta[sd.COUNT] = count
        self._meta[sd.RECOVERIES] = self._meta[sd.RECOVERIES] + 1  # every handle drops its maps
        self._meta[sd.STATE] = self._meta[sd.STATE] & ~sd.DIRTY

    # ---------------------------------------------------------------------- variables

    def _var(self, index: int) -> VarFile | None:
        """The mapping of ``index``, opened (and cached) if needed; ``None`` if absent."""
        var = self._vars.get(index)
        if var is not None and not var.retired:
            return var
        if var is not None:
            del self._vars[index]
            var.close()
        try:
            return self._map(index)
        except OSError as exc:
            raise translate(exc, f"segment {self.key}: cannot open index {index}") from exc

    def _map(self, index: int) -> VarFile | None:
        name = str(index)
        writable = True
        try:
            fd = os.open(name, sd.OPEN_RW, dir_fd=self._dir_fd)
        except FileNotFoundError:
            return None
        except PermissionError:
            writable = False  # another trusted user's segment that we may only read
            fd = os.open(name, sd.OPEN_RO, dir_fd=self._dir_fd)
        try:
            var = VarFile(fd, writable=writable, trusted=self._trusted(os.fstat(fd)))
        finally:
            os.close(fd)
        if self._vars and self._no_room():
            self._vars.popitem(last=False)[1].close()
        self._vars[index] = var
        return var

    def read(self, index: int) -> bytes | memoryview | Split | None:
        """Return the current bytes of ``index`` without taking the lock, or ``None``."""
        if self._epoch != fork_epoch():
            self._after_fork()
        meta = self._meta
        state = meta[_STATE]
        # DIRTY says a writer is mid-change, or died there; the writer's pid rides along, so a
        # reader racing a live writer does not try its lock (a system call, and a stall for the
        # writer) on every get, only when the pid is not a live process of ours.
        if state & _DIRTY and not pid_alive(state >> 32):
            self._recover_if_abandoned()
        if meta[_RECOVERIES] != self._recoveries:
            self._forget_mappings()
        generation = meta[_GENERATION]  # before we look: see _absent
        var = self._vars.get(index)
        if var is not None:
            data = var.read()
            if data:
                return data
        elif self._absent.get(index) == generation and not state & _DESTROYED:
            return None
        elif not self._admit(index, room=not self._no_room()):
            data = self._read_unmapped(index, generation)
            if data is not MAP_IT:
                return data
        for _ in range(3):
            var = self._var(index)
            if var is None:
                self._check()  # absent because destroyed? say so
                self._note_absent(index, generation)
                return None
            data = var.read()
            if data:
                return data
            if data == CONTENDED:
                break
        return self._read_locked(index)

    def _note_absent(self, index: int, generation: int) -> None:
        """Remember that ``index`` had no file while the segment's GENERATION (bumped by every
        completed write and removal, after it) was ``generation``: until it changes, ``index``
        is still absent, and a read says so without asking the filesystem (an ``open`` that
        fails costs about 3 us, most of a cache miss). A recovery, which publishes what a dead
        writer left without a bump, clears them all (``_forget_mappings``)."""
        absent = self._absent
        if len(absent) >= _MISS_MEMORY:
            absent.clear()
        absent[index] = generation

    def _no_room(self) -> bool:
        """Whether mapping another variable means unmapping one: this handle keeps
        ``MAX_MAPPINGS``, or the process's handles together ``PROCESS_MAPPINGS``."""
        return len(self._vars) >= MAX_MAPPINGS or VarFile.live >= PROCESS_MAPPINGS

    def _admit(self, index: int, *, room: bool = False) -> bool:
        """Whether to map ``index`` now rather than copy its value with ``pread``. Mapping a
        file costs about 12 us (most of it the first touch of its page), and unmapping another
        to make room as much again, against about 5 us for a pread copy, while a mapped get
        costs a fifteenth of that: so a variable is mapped on its second read while there is
        ``room``, and once the mappings are all taken, only if missed ``_ADMIT_AFTER`` times
        lately (a scan of many variables, each read once, maps none)."""
        misses = self._misses
        count = misses.pop(index, 0) + 1
        if count >= (2 if room else _ADMIT_AFTER):
            return True
        misses[index] = count
        if len(misses) > _MISS_MEMORY:
            misses.popitem(last=False)
        return False

    def _read_unmapped(self, index: int, generation: int) -> bytes | memoryview | Split | None:
        """``read`` of a variable we keep no mapping of: a ``pread`` copy, or ``MAP_IT``;
        ``generation``: the segment's when the read began (see ``_note_absent``)."""
        name = str(index)
        for _ in range(3):
            try:
                fd = os.open(name, sd.OPEN_RO, dir_fd=self._dir_fd)
            except FileNotFoundError:
                self._check()  # absent because destroyed? say so
                self._note_absent(index, generation)
                return None
            except OSError as exc:
                raise translate(exc, f"segment {self.key}: cannot open index {index}") from exc
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise CorruptSegment("variable is not a regular file")
                data = read_unmapped(fd, st.st_size)
            except OSError as exc:
                raise translate(exc, f"segment {self.key}: cannot read index {index}") from exc
            finally:
                os.close(fd)
            if data is None:
                continue  # replaced between our open and our read: open the new file
            if data is CONTENDED:
                return self._read_locked(index)
            # Segment.get asks trusted(index) next, on this thread, about this file.
            self._unmapped.last = (index, self._trusted(st))
            return data
        return MAP_IT

    def _trusted(self, st: os.stat_result) -> bool:
        return self._dir_trusted and st.st_uid in self._trust_uids and not writable_by_others(st)

    def _read_locked(self, index: int) -> bytes | memoryview | Split | None:
        """Read with no writer running: anything but a value or absence is damage."""
        self.acquire(None)
        try:
            var = self._var(index)
            if var is None:
                return None
            data = var.read()
        finally:
            self.release()
        if not data:
            raise CorruptSegment(
                f"segment {self.key} index {index}: the variable file's sequence or length "
                "words are inconsistent",
                key=self.key,
                index=index,
            )
        return data

    def trusted(self, index: int) -> bool:
        """Whether only trusted uids could have written ``index``'s current file."""
        var = self._vars.get(index)
        if var is None:
            last = getattr(self._unmapped, "last", None)
            if last is not None and last[0] == index:
                self._unmapped.last = None  # it speaks for one read only
                return bool(last[1])
            var = self._var(index)
        return var is not None and var.trusted

    def write(self, index: int, data: bytes | Pieces) -> None:
        """Store ``data`` at ``index``: in place when it fits its slot, else in a new file."""
        self._check()
        meta = self._meta
        var = self._vars.get(index)
        if (
            var is None
            and self._no_room()
            and not meta[_VIEWS]
            and not self._admit(index)
            and self._write_unmapped(index, data)
        ):
            return
        if var is None or var.retired:
            var = self._var(index)
        old = var.length if var is not None else 0
        used = meta[_USED]
        if used - old + len(data) > self.size:
            raise segment_full(self.key, index, len(data), self.size, used - old)
        if var is not None and not var.writable:
            raise UnsafeSegment(f"segment {self.key}: no write permission for index {index}")
        # The counts are stored after the value; DIRTY (clear while we hold the lock) tells the
        # next lock holder to recount them if we die in between.
        meta[_STATE] = self._dirty_tag
        try:
            viewed = bool(meta[_VIEWS]) and self._viewed()
            if var is not None and not viewed and _fits(var.capacity, len(data)):
                var.write(data)
            else:
                self._replace(index, data, var, scrub=not viewed)
        except BaseException:
            meta[_STATE] = _DIRTY  # we live on, so name no live writer (see read)
            raise
        self._changed(used - old + len(data), 1 if var is None else 0)

    def _changed(self, used: int, added: int) -> None:
        """Store the counts after a change, clear DIRTY, wake waiters. Lock held."""
        meta = self._meta
        meta[_USED] = used
        if added:
            meta[_COUNT] += added
        meta[_GENERATION] += 1
        meta[_STATE] = 0
        if meta[_WAITERS]:
            self._notify()

    def _write_unmapped(self, index: int, data: bytes | Pieces) -> bool:
        """``write`` in place with pwrite, for a variable we keep no mapping of; ``False`` if it
        cannot be done so (absent, not ours to write, unsound, or too big for its slot): the
        mapped path then does it, or says what is wrong. Lock held."""
        try:
            fd = os.open(str(index), sd.OPEN_RW, dir_fd=self._dir_fd)
        except OSError:
            return False
        meta = self._meta
        try:
            state = unmapped_state(fd)
            if state is None or not _fits(state[1], len(data)):
                return False
            generation, capacity, old = state
            used = meta[_USED]
            if used - old + len(data) > self.size:
                raise segment_full(self.key, index, len(data), self.size, used - old)
            meta[_STATE] = self._dirty_tag  # as in write: a death from here on means a recount
            write_unmapped(fd, generation, capacity, data)
        except OSError as exc:
            raise translate(exc, f"segment {self.key}: cannot store index {index}") from exc
        finally:
            os.close(fd)
        self._changed(used - old + len(data), 0)
        return True

    def _replace(
        self, index: int, data: bytes | Pieces, old: VarFile | None, *, scrub: bool
    ) -> None:
        """Publish ``data`` in a new file, then retire the old one, zeroed if ``scrub``. Lock
        held."""
        capacity = capacity_for(len(data), old.capacity if old is not None else 0)
        if old is not None and len(data) * 4 < old.capacity:
            capacity = capacity_for(len(data))
        tmp = f".tmp-{sd.token()}"
        try:
            create(self._dir_fd, tmp, data, file_mode(self.perm), capacity)
            os.rename(tmp, str(index), src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        except OSError as exc:
            self._after_failure()
            raise translate(exc, f"segment {self.key}: cannot store index {index}") from exc
        if old is not None:
            old.retire_and_scrub(scrub=scrub)

    def _after_failure(self) -> None:
        """Nothing was published; tidy now, or leave DIRTY for the next lock holder."""
        with contextlib.suppress(ShmfsError):
            self._recover()

    def delete(self, index: int) -> bool:
        """Unlink, retire and zero ``index``'s file; whether it existed. Lock held."""
        self._check()
        var = self._var(index)
        if var is None:
            return False
        meta = self._meta
        length = var.length
        try:
            os.unlink(str(index), dir_fd=self._dir_fd)
        except OSError as exc:
            raise translate(exc, f"segment {self.key}: cannot remove index {index}") from exc
        meta[_STATE] = self._dirty_tag
        try:
            var.retire_and_scrub(scrub=not (meta[_VIEWS] and self._viewed()))
        except BaseException:
            meta[_STATE] = _DIRTY  # we live on, so name no live writer (see read)
            raise
        self._vars.pop(index, None)
        var.close()
        self._changed(meta[_USED] - length, -1)
        return True

    def version(self, index: int) -> object:
        """The file's inode and control word: any write or removal changes one of them."""
        var = self._var(index)
        return None if var is None else var.version

    def watcher(self) -> TmpfsWatcher:
        """Register as a waiter and watch ``.notify``."""
        self._check()
        return TmpfsWatcher(self)

    # ------------------------------------------------------------------- views
    #
    # A view hands out a value where it lies in the mapping, so no writer may overwrite it while
    # the view is open. Viewers hold a shared flock on the segment's .views file; a writer that
    # sees the VIEWS count non-zero tries an exclusive flock on it, and if that fails (someone
    # views) it publishes a new file instead of writing in place, and leaves the old file's
    # bytes alone. The count only spares writers that system call when nobody views; the flock
    # is the truth, and a viewer that died leaves no flock, so the next writer resets the count.

    @contextlib.contextmanager
    def pin(self, index: int, timeout: float | None) -> Iterator[memoryview | None]:
        """The current frame of ``index`` in place, unchanging until the block ends; ``None``
        if ``index`` holds no value."""
        self.acquire(timeout)
        try:
            var = self._var(index)
            frame = None
            if var is not None:
                frame = var.current()
                self._hold_view()
        finally:
            self.release()
        if frame is None:
            yield None
            return
        try:
            yield frame
        finally:
            with contextlib.suppress(BufferError):  # still exported (a numpy array, say)
                frame.release()
            self._drop_view(timeout)

    def _views_file(self) -> int:
        for _ in range(2):
            try:
                return os.open(sd.VIEWS_NAME, sd.OPEN_RW, dir_fd=self._dir_fd)
            except PermissionError:  # a segment we may only read: flock needs no more
                return os.open(sd.VIEWS_NAME, sd.OPEN_RO, dir_fd=self._dir_fd)
            except FileNotFoundError:  # a segment made before views existed
                sd.make_views_file(self._dir_fd, self.perm)
        raise FileNotFoundError(errno.ENOENT, "the segment's views file keeps vanishing")

    def _hold_view(self) -> None:
        """Count a view this handle opens. Segment lock held."""
        try:
            if self._views == 0:
                if self._views_fd < 0:
                    self._views_fd = self._views_file()
                fcntl.flock(self._views_fd, fcntl.LOCK_SH)  # writers only ever probe it
        except OSError as exc:
            raise translate(exc, f"segment {self.key}: cannot open a view") from exc
        self._views += 1
        self._meta[_VIEWS] += 1

    def _drop_view(self, timeout: float | None) -> None:
        self.acquire(timeout)
        try:
            self._views -= 1
            if self._views == 0:
                fcntl.flock(self._views_fd, fcntl.LOCK_UN)
            if self._meta[_VIEWS]:
                self._meta[_VIEWS] -= 1
        finally:
            self.release()

    def _viewed(self) -> bool:
        """Whether any handle, this one included, has a view open. Segment lock held."""
        try:
            if self._probe_fd < 0:  # a description of its own: our own views' flock counts
                self._probe_fd = self._views_file()
            fcntl.flock(self._probe_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError as exc:
            raise translate(exc, f"segment {self.key}: cannot check for views") from exc
        fcntl.flock(self._probe_fd, fcntl.LOCK_UN)
        self._meta[_VIEWS] = 0  # nobody views: the count was left by viewers that died
        return False

    def _notify(self) -> None:
        """Wake waiters: a write to ``.notify`` is an inotify event; mapped writes raise none."""
        try:
            if self._notify_fd < 0:
                self._notify_fd = os.open(sd.NOTIFY_NAME, sd.OPEN_RW, dir_fd=self._dir_fd)
            os.pwrite(self._notify_fd, self._meta[sd.GENERATION].to_bytes(8, "little"), 0)
        except OSError:
            pass  # waiters also re-check on their own every second; a lost wake-up only delays

    def _set_waiter(self, pid: int, *, register: bool) -> None:
        """Add or remove ``pid`` in the waiter table, dropping waiters that died. Lock held.

        ``WAITERS`` counts the table's entries plus any waiters beyond its 64 slots, which are
        counted without a pid and so never pruned.
        """
        meta, table = self._meta, sd.WAITER_TABLE
        overflow = max(meta[sd.WAITERS] - sum(1 for word in table if meta[word]), 0)
        for word in table:
            if meta[word] and not pid_alive(meta[word]):
                meta[word] = 0
        if register:
            free = next((word for word in table if not meta[word]), None)
            if free is None:
                overflow += 1
            else:
                meta[free] = pid
        else:
            mine = next((word for word in table if meta[word] == pid), None)
            if mine is None:
                overflow = max(overflow - 1, 0)
            else:
                meta[mine] = 0
        meta[sd.WAITERS] = overflow + sum(1 for word in table if meta[word])

    def indices(self) -> list[int]:
        """Indices holding values, ascending."""
        self._check()
        try:
            names = os.listdir(self._dir_fd)
        except OSError as exc:
            raise translate(exc, f"segment {self.key}: cannot list") from exc
        found = (sd.index_of(name) for name in names)
        return sorted(index for index in found if index is not None)

    def count(self) -> int:
        """Number of variables."""
        self._check()
        return int(self._meta[sd.COUNT])

    def info(self) -> SegmentInfo:
        """Report on the segment."""
        self._check()
        meta = self._meta
        return SegmentInfo(
            key=self.key,
            backend=self.name,
            size=self.size,
            used=int(meta[sd.USED]),
            variables=int(meta[sd.COUNT]),
            perm=self.perm,
            owner=self.owner,
            location=self.path,
            created=meta[sd.CREATED] / 1e9,
            creator_pid=int(meta[sd.CREATOR]),
        )

    @classmethod
    def scope(cls, root: str | None) -> str:
        """The root directory segments live under."""
        return f"under {root or default_root()}"

    @classmethod
    def list_segments(cls, root: str | None) -> list[SegmentInfo]:
        """Report every readable segment under ``root``."""
        root = root or default_root()
        try:
            root_fd = open_dir(root)
        except FileNotFoundError:
            return []
        try:
            names = os.listdir(root_fd)
            found = [
                sd.peek(root_fd, root, name) for name in names if sd.index_of(name) is not None
            ]
        except OSError as exc:
            raise translate(exc, f"cannot list segments in {root}") from exc
        finally:
            os.close(root_fd)
        return sorted((info for info in found if info is not None), key=lambda info: info.key)


def _dirty_tag() -> int:
    """The STATE word a writer of this process stores while it changes the segment: DIRTY,
    and its pid in the high half (readers ask whether it is alive)."""
    return _DIRTY | os.getpid() << 32


def _fits(capacity: int, length: int) -> bool:
    """Whether a value goes in place: it fits, and does not leave a big slot mostly empty."""
    return length <= capacity and not (capacity > _SHRINK_ABOVE and length * 4 < capacity)


# A value shrinking below a quarter of a slot this large gets a smaller file, so one huge value
# does not pin its memory after it is replaced by a small one.
_SHRINK_ABOVE: Final = 64 * 1024


def _open_or_create_dir(
    root_fd: int, key: int, size: int, perm: int, trust_uids: frozenset[int]
) -> int | None:
    """A verified descriptor of segment ``key``'s directory, created if absent; ``None`` when a
    concurrent destroy removed it between our steps."""
    name = str(key)
    try:
        fd = open_dir(name, root_fd)
    except FileNotFoundError:
        sd.publish_new_segment(root_fd, key, size, perm)
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


class TmpfsWatcher:
    """A waiter on a tmpfs segment: listed in the metadata so writers notify, and watching
    ``.notify``."""

    def __init__(self, backend: TmpfsBackend) -> None:
        self._backend: TmpfsBackend | None = None
        self._watch = FileWatch(backend._dir_fd, sd.NOTIFY_NAME)
        try:
            backend.acquire(None)
            try:
                backend._set_waiter(os.getpid(), register=True)
            finally:
                backend.release()
        except BaseException:
            self._watch.close()
            raise
        self._backend = backend

    def fileno(self) -> int | None:
        """The inotify descriptor."""
        return self._watch.fileno()

    def wait(self, timeout: float) -> None:
        """Sleep until ``.notify`` is written or ``timeout`` passes."""
        self._watch.wait(timeout)

    def drain(self) -> None:
        """Forget delivered wake-ups."""
        self._watch.drain()

    def close(self) -> None:
        """Leave the waiter table and stop watching. Idempotent."""
        backend, self._backend = self._backend, None
        self._watch.close()
        if backend is None or backend._meta_mm is None:
            return  # the handle was closed (or the segment destroyed) first: nothing to undo
        with contextlib.suppress(ShmfsError):
            backend.acquire(None)
            try:
                backend._set_waiter(os.getpid(), register=False)
            finally:
                backend.release()
