"""A tmpfs segment handle: opening, the metadata page, the current index, the lock, forks,
recovery after a writer that died, closing and destroying.

``backend.py`` builds the Backend protocol's operations on it (reads, writes, views, reports).
A writer sets the DIRTY bit in the metadata, with its pid, before it changes anything and clears
it after; a writer killed in between leaves it set, and the next process to take the lock (or a
reader that finds the pid dead) rebuilds what the death left (``recovery.py``). ``destroy()``
renames the directory away, marks the segment DESTROYED (every handle checks it), then zeroes
and unlinks each file.

A user who may read a segment but not write it gets a read-only handle: the metadata and every
file mapped read-only, no segment lock (the lock file is writers' alone, see ``segdir.py``), no
C fast path (it writes the metadata), reads that never wait on the lock, and an
``UnsafeSegment`` (a ``PermissionError``) for anything that would change the segment.

Over 400 lines: opening (with the checks a shared root needs), the lock, forks, recovery and
destroying are one object's life, each step reading the state the others leave.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable
from typing import Any, Concatenate, Final, ParamSpec, Self, TypeVar

from shmfs.backends import SegmentInfo, refuse_options
from shmfs.backends.fsutil import open_dir, open_file, translate, verify_owner, writable_by_others
from shmfs.backends.tmpfs import layout as L
from shmfs.backends.tmpfs import segdir as sd
from shmfs.backends.tmpfs.index import Index, index_name
from shmfs.backends.tmpfs.largefile import PAGE
from shmfs.backends.tmpfs.largevars import LargeVars
from shmfs.backends.tmpfs.listing import check_key, peek
from shmfs.backends.tmpfs.recovery import recover
from shmfs.backends.tmpfs.slabs import Slabs
from shmfs.backends.tmpfs.unmapped import mappable, open_words
from shmfs.backends.tmpfs.views import Views
from shmfs.backends.tmpfs.waiters import TmpfsWatcher, set_waiter
from shmfs.errors import CorruptSegment, SegmentDetached, SegmentNotFound, UnsafeSegment
from shmfs.forking import fork_epoch
from shmfs.hotpath import TmpfsHot, new_hot
from shmfs.locking import HoldsSegmentLock, SegmentLock

__all__ = ["TmpfsHandle", "default_root", "lock_free"]

_STATE, _DIRTY, _DESTROYED = L.M_STATE, L.STATE_DIRTY, L.STATE_DESTROYED
_RECOVERIES, _INDEX_GEN, _GENERATION = L.M_RECOVERIES, L.M_INDEX_GEN, L.M_GENERATION
# Attempts to open a segment that keeps being destroyed under us before giving up.
_OPEN_ATTEMPTS: Final = 100

_H = TypeVar("_H", bound="TmpfsHandle")
_P = ParamSpec("_P")
_R = TypeVar("_R")


def lock_free(method: Callable[Concatenate[_H, _P], _R]) -> Callable[Concatenate[_H, _P], _R]:
    """Mark a call that uses the handle's descriptors and mappings without the segment lock: a
    close waits until it returns (see ``TmpfsHandle._close_now``)."""

    @functools.wraps(method)
    def counted(self: _H, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        readers = self._readers
        readers.append(None)  # one C-level step under the GIL: no lock needed to count
        try:
            if self._close_due:
                raise SegmentDetached(f"segment {self.key}: this handle was detached", key=self.key)
            return method(self, *args, **kwargs)
        finally:
            readers.pop()
            if self._close_due and not readers:
                self._close_files()

    return counted


def default_root() -> str:
    """The root used when ``root=`` names none: ``$SHMFS_ROOT``, unless it is a URL (then it
    is the Redis backend's server), else a per-user directory in /dev/shm."""
    chosen = os.environ.get("SHMFS_ROOT", "")
    return chosen if chosen and "://" not in chosen else f"/dev/shm/shmfs-{os.geteuid()}"


class TmpfsHandle(HoldsSegmentLock):
    """What a tmpfs segment handle holds, and its life from open to close."""

    name = "tmpfs"

    # Class-level defaults so close() works on an instance whose __init__ failed part way.
    _root_fd = -1
    _dir_fd = -1
    _meta_fd = -1
    _lock_fd = -1
    _notify_fd = -1
    #: False: a user who may only read the segment (no lock, no changes).
    writable = True
    _meta_mm: Any = None
    _meta_mapped = False
    _index: Index | None = None
    _lock: SegmentLock | None = None
    # Set first thing in __init__; close() finds them with getattr after a failed one.
    _large: LargeVars
    _slabs: Slabs
    _views: Views
    #: The C get and put of small values (shmfs.hotpath), or None: pure Python, or closed.
    hot: TmpfsHot | None = None
    # Lock-free calls in flight, one entry each (``lock_free``); set first thing in __init__.
    _readers: list[None]
    _close_due = False  # closed: the files go once no lock-free call is in flight
    _files_closed = False

    def __init__(
        self, key: int, root: str, root_fd: int, dir_fd: int, trust_uids: frozenset[int]
    ) -> None:
        self._readers = []
        self._close_due = False  # an instance attribute: read twice by every lock-free read
        self._close_guard = threading.RLock()
        self.key = key
        self.root = root
        self.path = os.path.join(root, str(key))
        self._root_fd = root_fd
        self._dir_fd = dir_fd
        self._trust_uids = trust_uids
        self._epoch = fork_epoch()
        self._dirty_tag = _dirty_tag()
        self._last = threading.local()  # .value: (index, trusted) of this thread's last read
        dir_st = os.fstat(dir_fd)
        self.owner = dir_st.st_uid
        self._dir_trusted = dir_st.st_uid in trust_uids and not writable_by_others(dir_st)
        # In a directory others may write, a name can be a hard link they made to a file of
        # another of our segments: a file written there must have one link.
        self._one_link = writable_by_others(dir_st)
        self._slabs = Slabs(self._directory, self._trusted, one_link=self._one_link)
        self._large = LargeVars(key, self._directory, self._trusted, one_link=self._one_link)
        try:
            self._open_meta()
            self.size = int(self._meta[L.M_SIZE])
            self.perm = int(self._meta[L.M_PERM])
            self._views = Views(key, self.perm, self._directory)
            self._current_index()
        except BaseException:
            self._dir_fd = self._root_fd = -1  # the caller owns these until we succeed
            self._close_now()
            raise
        self._recoveries = self._meta[_RECOVERIES]
        # The C fast path reads mappings and writes the metadata (puts, recoveries): a
        # segment whose metadata others can write (and so truncate) is not mapped at all
        # (unmapped.py), and one this user may only read is read in Python.
        if self._meta_mapped and self.writable:
            self.hot = new_hot(self._large.vars, self._slabs.files, self._meta)
        self._reset_hot()
        if self.hot is not None and self._index is not None:
            self._give_hot_index(self._index)

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
        root_fd = sd.open_root(root, trust_uids)
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
            raise CorruptSegment(
                f"segment {key}: could not open it after {_OPEN_ATTEMPTS} tries", key=key
            )
        except BaseException:
            if root_fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(root_fd)
            raise

    def _directory(self) -> int:
        return self._dir_fd

    @property
    def dir_fd(self) -> int:
        """The segment directory's descriptor (for watchers)."""
        return self._dir_fd

    def _open_meta(self) -> None:
        what = f"segment {self.key}"
        try:
            try:
                fd, st = open_file(
                    sd.META_NAME,
                    self._dir_fd,
                    write=True,
                    what=f"{what} metadata",
                    single_link=self._one_link,
                )
            except UnsafeSegment:
                raise  # a PermissionError too, but not one that reading would cure
            except PermissionError:  # a segment we may only read
                fd, st = open_file(sd.META_NAME, self._dir_fd, write=False, what=f"{what} metadata")
                self.writable = False
        except FileNotFoundError:
            raise SegmentNotFound(f"segment {self.key} was destroyed", key=self.key) from None
        except OSError as exc:
            raise translate(exc, f"cannot open segment {self.key}") from exc
        self._meta_fd = fd
        verify_owner(st, self._trust_uids, f"segment {self.key} metadata")
        if st.st_size != PAGE:
            raise self._meta_damaged(f"metadata is {st.st_size} bytes, not {PAGE}", 0)
        self._meta_mapped = mappable(st)
        self._meta_mm, self._meta = open_words(
            fd, st, PAGE, writable=self.writable, name=f"segment {self.key} metadata"
        )
        if self._meta[L.M_MAGIC] != L.META_MAGIC:
            raise self._meta_damaged("metadata has a bad magic number", L.M_MAGIC)
        version = self._meta[L.M_VERSION]
        if version in (1, 2):  # 2 locked its metadata file, which readers can open too
            raise self._meta_damaged(
                f"made by an earlier shmfs (tmpfs format {version}), which this shmfs does not "
                f"read: remove it with `shmfs rm --key {self.key} --root {self.root}` (its "
                "values go with it) and store them again",
                L.M_VERSION,
            )
        if version != L.META_VERSION:
            raise self._meta_damaged(
                f"metadata version {version}; this shmfs reads {L.META_VERSION} (upgrade shmfs)",
                L.M_VERSION,
            )
        check_key(self._meta, self.key, f"segment {self.key} in {self.root}")
        if self._meta[_STATE] & _DESTROYED:
            raise SegmentNotFound(f"segment {self.key} was destroyed", key=self.key)
        if self.writable:
            self._open_lock(st.st_uid)

    def _open_lock(self, owner: int) -> None:
        """Open the lock file (its owner the metadata's): only writers can; a user who may
        write the metadata and not the lock (a segment whose modes were changed by hand) is a
        reader."""
        try:
            self._lock_fd, _ = open_file(
                sd.LOCK_NAME,
                self._dir_fd,
                write=True,
                what=f"segment {self.key} lock file",
                owners=(owner,),
            )
        except UnsafeSegment:
            raise  # a PermissionError too, but a planted file, not a reader's lot
        except PermissionError:
            self.writable = False
            return
        except OSError as exc:
            raise translate(exc, f"segment {self.key}: cannot open its lock file") from exc
        self._lock = SegmentLock(self._lock_fd, f"segment {self.key}")

    def read_only(self, doing: str) -> UnsafeSegment:
        """The error for a change (``doing``) asked of a read-only handle."""
        return UnsafeSegment(
            f"segment {self.key}: cannot {doing}: uid {os.geteuid()} may only read it "
            f"(perm {self.perm:04o}, owner uid {self.owner})",
            key=self.key,
        )

    def _current_index(self) -> Index:
        """The mapping of the index the metadata names, remapped if it was replaced."""
        for _ in range(_OPEN_ATTEMPTS):
            gen = int(self._meta[_INDEX_GEN])
            index = self._index
            if index is not None and index.gen == gen:
                return index
            what = f"segment {self.key} index"
            try:
                writable = self.writable
                try:
                    fd, _ = open_file(
                        index_name(gen),
                        self._dir_fd,
                        write=writable,
                        what=what,
                        single_link=writable and self._one_link,
                    )
                except UnsafeSegment:
                    raise
                except PermissionError:
                    if not writable:
                        raise
                    fd, _ = open_file(index_name(gen), self._dir_fd, write=False, what=what)
                    writable = False
            except FileNotFoundError:
                if self._meta[_INDEX_GEN] != gen:
                    continue  # replaced again while we opened it
                self._check()
                raise self._meta_damaged(
                    f"its index file {index_name(gen)} is missing", L.M_INDEX_GEN
                ) from None
            except OSError as exc:
                raise translate(exc, f"segment {self.key}: cannot open its index") from exc
            try:
                fresh = Index(fd, gen, writable=writable)
            except CorruptSegment as exc:
                raise CorruptSegment(
                    f"segment {self.key}: {exc}",
                    key=self.key,
                    index=None,
                    file=os.path.join(self.path, index_name(gen)),
                    offset=0,
                ) from exc
            finally:
                os.close(fd)
            self._index = fresh
            if self.hot is not None:
                self._give_hot_index(fresh)
            # The old index is not closed: a lock-free read in another thread may be inside
            # it (it looks again once it sees the generation moved). It is unmapped when the
            # last reference to it goes, which is here unless such a read holds it.
            return fresh
        raise CorruptSegment(f"segment {self.key}: its index keeps being replaced", key=self.key)

    def _give_hot_index(self, index: Index) -> None:
        """Tell the C fast path the current index; turn it off if the index is not mapped
        (a file another user could truncate: unmapped.py)."""
        assert self.hot is not None
        if index.mapped:
            self.hot.index(index.words, index.gen)
        else:
            self.hot.close()  # a closed fast path answers SLOW: Python reads from now on
            self.hot = None

    def _check(self) -> None:
        """Reopen what a fork shares with the parent; refuse a destroyed segment."""
        if self._epoch != fork_epoch():
            self._after_fork()
        if self._meta[_STATE] & _DESTROYED:
            raise SegmentNotFound(f"segment {self.key} was destroyed", key=self.key)

    def _after_fork(self) -> None:
        # The child shares the parent's open file descriptions: an flock on them is the
        # parent's lock, and LOCK_UN from the child would release it. Open our own, and only
        # close (never unlock) the inherited ones. Mappings stay valid across fork.
        inherited = (self._dir_fd, self._meta_fd, self._root_fd, self._notify_fd, self._lock_fd)
        what = f"segment {self.key}"
        try:
            self._dir_fd = open_dir(".", inherited[0])
            self._meta_fd, _ = open_file(
                sd.META_NAME, self._dir_fd, write=self.writable, what=f"{what} metadata"
            )
            self._root_fd = open_dir(".", inherited[2], search_only=True)
            if self._lock is not None:
                self._lock_fd, _ = open_file(
                    sd.LOCK_NAME, self._dir_fd, write=True, what=f"{what} lock file"
                )
        except OSError as exc:
            raise translate(exc, f"segment {self.key}: cannot reopen after fork") from exc
        if self._lock is not None:
            parent, self._lock = self._lock, SegmentLock(self._lock_fd, f"segment {self.key}")
            self._lock.inherit(parent)
        self._notify_fd = -1
        self._views.after_fork()
        for fd in inherited:
            if fd >= 0:
                os.close(fd)
        self._epoch = fork_epoch()
        self._dirty_tag = _dirty_tag()
        # The parent's threads' calls in flight are not this process's: counting them would
        # put a close off for ever. (A call begun before the fork pops from the old list.)
        self._readers = []
        self._reset_hot()

    def _reset_hot(self) -> None:
        """Tell the C fast path the lock, recovery count and DIRTY word it must use now."""
        if self.hot is not None and self._lock is not None:
            self.hot.reset(self._lock.interface, self._recoveries, self._dirty_tag)

    def is_open(self) -> bool:
        """Whether this handle is still open (for watchers)."""
        return self._meta_mm is not None

    def _close_now(self) -> None:
        """Close everything this handle opened once no lock-free call is in flight: now if none
        is, else as the last one returns. Such a call may hold a descriptor's number, between
        reading it and a system call on it; closed under it, the number could be reused for
        another file (another segment's directory, say) and the call would read that file.
        Idempotent."""
        self._close_due = True
        if not getattr(self, "_readers", None):
            self._close_files()

    def _close_files(self) -> None:
        """Unmap and close everything this handle opened, once (a finalizer the closing runs
        may close again; two threads may both find the last call gone)."""
        guard = getattr(self, "_close_guard", None)
        with guard if guard is not None else contextlib.nullcontext():
            if self._files_closed or getattr(self, "_readers", None):
                return  # done; or a call came in, and its return closes
            self._files_closed = True
            self._close_everything()

    def _close_everything(self) -> None:
        if self.hot is not None:
            self.hot.close()
            self.hot = None
        for part in ("_large", "_slabs", "_views"):
            owned = getattr(self, part, None)
            if owned is not None:
                owned.close()
        if self._index is not None:
            self._index.close()
            self._index = None
        if self._meta_mm is not None:
            try:
                self._meta.release()
                self._meta_mm.close()
            except BufferError:
                pass  # another thread still reads it; the GC unmaps it
            self._meta_mm = None
        for attr in ("_notify_fd", "_lock_fd", "_meta_fd", "_dir_fd", "_root_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                setattr(self, attr, -1)
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _check_writable(self) -> None:
        """``_check``, for a change made with the lock held: refuse one a forked child would
        make under its parent's lock."""
        self._check()
        if self._lock is None:
            raise self.read_only("change it")
        self._lock.check_writable()

    def destroy(self) -> None:
        """Unpublish, mark destroyed, then zero and remove every file. Lock held.

        Unpublishing (a rename to a fresh hidden name) comes first: if it fails (another
        user's segment in a sticky root, names taken) nothing has changed. After it, nothing
        anyone else put in the directory can stop the rest: what cannot be removed is left in
        the unpublished directory, and the key is free at once.
        """
        self._check_writable()
        root_fd = self._root_fd
        grave: str | None = None
        try:
            grave = sd.fresh_name(
                f".dead-{self.key}",
                root_fd,
                lambda name: os.rename(str(self.key), name, src_dir_fd=root_fd, dst_dir_fd=root_fd),
                f"cannot destroy segment {self.key}",
            )
        except FileNotFoundError:
            pass  # a destroy that died got that far: unpublished, under a name we cannot know
        except OSError as exc:
            raise translate(exc, f"cannot destroy segment {self.key}") from exc
        self._meta[_STATE] = self._meta[_STATE] | _DESTROYED
        self._notify()  # waiters wake up and find the segment gone
        try:
            sd.wipe_dir(self._dir_fd)
        except OSError as exc:
            raise translate(exc, f"cannot finish destroying segment {self.key}") from exc
        if grave is not None:
            with contextlib.suppress(OSError):  # left by someone else: swept by its owner
                os.rmdir(grave, dir_fd=root_fd)
        self._large.close()

    def acquire(self, timeout: float | None) -> None:
        """Take the segment lock; refuse a destroyed segment; repair after a dead writer."""
        self._check()
        lock = self._lock
        if lock is None:
            raise self.read_only("take its lock")
        lock.acquire(timeout)
        try:  # a lock is never held past an exception
            state = self._meta[_STATE]
            if state & _DESTROYED:
                raise SegmentNotFound(f"segment {self.key} was destroyed", key=self.key)
            if state & _DIRTY:
                self._recover()
            if self._meta[_RECOVERIES] != self._recoveries:
                self._forget_mappings()
        except BaseException:
            lock.release()
            raise

    def _forget_mappings(self) -> None:
        """Drop every cached large-variable mapping: a writer died between publishing a file
        and retiring the one it replaced, so a mapping we hold may be of a file no longer in
        the segment. Slab files are never replaced: their mappings stay."""
        self._large.close()
        self._recoveries = self._meta[_RECOVERIES]
        self._reset_hot()

    def _recover_if_dirty(self) -> None:
        # A reader cannot repair, and need not: the index names whole values at every instant.
        if self._meta[_STATE] & _DIRTY and self._lock is not None:
            self.acquire(None)  # acquire() repairs
            self.release()

    def _recover_if_abandoned(self) -> None:
        """DIRTY and the lock free: the writer died, so repair now rather than wait for the
        next writer."""
        if self._lock is not None and self._lock.try_lock():
            try:
                if self._meta[_STATE] & _DIRTY:
                    self._recover()
            finally:
                self._lock.release()

    def _recover(self) -> None:
        """A writer died (or failed) mid-change: see ``recovery.py``. Lock held."""
        meta = self._meta
        try:
            recover(self._dir_fd, meta, self._current_index(), self._slabs, self._large_length)
        except OSError as exc:
            raise translate(
                exc, f"segment {self.key}: cannot recover after a failed write"
            ) from exc
        meta[_RECOVERIES] = meta[_RECOVERIES] + 1  # every handle drops its large mappings
        meta[_STATE] = meta[_STATE] & ~_DIRTY

    def _large_length(self, index: int) -> int | None:
        self._large.forget(index)
        try:
            if self._large.var(index) is None:
                return None
        except CorruptSegment:
            return None  # a damaged file names nothing whole: recovery drops it
        return self._large.length(index)

    def _trusted(self, st: os.stat_result) -> bool:
        return self._dir_trusted and st.st_uid in self._trust_uids and not writable_by_others(st)

    def _meta_damaged(self, what: str, word: int) -> CorruptSegment:
        """The error for damage to the metadata page, at ``word``."""
        name = os.path.join(self.path, sd.META_NAME)
        return CorruptSegment(
            f"segment {self.key} ({name} at offset {word * 8}): {what}",
            key=self.key,
            index=None,
            file=name,
            offset=word * 8,
        )

    def _damaged(self, index: int, what: str) -> CorruptSegment:
        return CorruptSegment(
            f"segment {self.key} index {index}: {what}", key=self.key, index=index
        )

    def _notify(self) -> None:
        """Wake waiters: a write to ``.notify`` is an inotify event; mapped writes raise none."""
        try:
            if self._notify_fd < 0:
                self._notify_fd, _ = open_file(
                    sd.NOTIFY_NAME, self._dir_fd, write=True, what=f"segment {self.key} notify"
                )
            os.pwrite(self._notify_fd, self._meta[_GENERATION].to_bytes(8, "little"), 0)
        except (OSError, UnsafeSegment):
            pass  # waiters also re-check on their own every second; a lost wake-up only delays

    @lock_free  # it names .notify through the directory's descriptor number
    def watcher(self) -> TmpfsWatcher:
        """Register as a waiter and watch ``.notify``."""
        self._check()
        return TmpfsWatcher(self)

    def register_waiter(self, pid: int, *, register: bool) -> None:
        """Add or remove ``pid`` in the segment's waiter table."""
        self.acquire(None)
        try:
            set_waiter(self._meta, pid, register=register)
        finally:
            self.release()

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
            found = [peek(root_fd, root, name) for name in names]
        except OSError as exc:
            raise translate(exc, f"cannot list segments in {root}") from exc
        finally:
            os.close(root_fd)
        return sorted((info for info in found if info is not None), key=lambda info: info.key)


def _dirty_tag() -> int:
    """The STATE word a writer of this process stores while it changes the segment: DIRTY,
    and its pid in the high half (readers ask whether it is alive)."""
    return _DIRTY | os.getpid() << 32


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
