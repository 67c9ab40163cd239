"""The tmpfs backend: a segment is a directory; small variables share slab files, found through
a mapped index, and a large variable has a file of its own.

What lives where is in ``segdir.py`` (the directory and its metadata page) and ``layout.py``
(every number of the format); the index in ``index.py``, slots in ``slabs.py``, large files in
``largefile.py`` and ``largevars.py``, views in ``views.py``, waiters in ``waiters.py``. This
module ties them to the Backend protocol.

A writer sets the DIRTY bit in the metadata, with its pid, before it changes anything and clears
it after; a writer killed in between leaves it set, and the next process to take the lock (or a
reader that finds the pid dead) rebuilds what the death left (``recovery.py``). ``destroy()``
marks the segment DESTROYED (every handle checks it), renames the directory away, then zeroes
and unlinks each file.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any, Final, Self

from shmfs.backends import SegmentInfo, refuse_options, segment_full
from shmfs.backends.fsutil import file_mode, open_dir, translate, verify_owner, writable_by_others
from shmfs.backends.tmpfs import layout as L
from shmfs.backends.tmpfs import segdir as sd
from shmfs.backends.tmpfs.index import Index, create_index, index_name, shift_for
from shmfs.backends.tmpfs.largefile import CONTENDED, PAGE
from shmfs.backends.tmpfs.largevars import GONE, LargeVars
from shmfs.backends.tmpfs.recovery import recover
from shmfs.backends.tmpfs.slabs import Slabs
from shmfs.backends.tmpfs.views import Views
from shmfs.backends.tmpfs.waiters import TmpfsWatcher, set_waiter
from shmfs.errors import CorruptSegment, SegmentNotFound
from shmfs.forking import fork_epoch, pid_alive
from shmfs.frame import Pieces, Split
from shmfs.hotpath import TmpfsHot, new_hot
from shmfs.locking import HoldsSegmentLock, SegmentLock

__all__ = ["TmpfsBackend", "default_root"]

_STATE, _DIRTY, _DESTROYED = L.M_STATE, L.STATE_DIRTY, L.STATE_DESTROYED
_USED, _COUNT, _GENERATION, _WAITERS = L.M_USED, L.M_COUNT, L.M_GENERATION, L.M_WAITERS
_RECOVERIES, _INDEX_GEN, _STAMP = L.M_RECOVERIES, L.M_INDEX_GEN, L.M_STAMP
_EMPTY, _TOMB, _LARGE = L.LOC_EMPTY, L.LOC_TOMB, L.LOC_LARGE
_M64: Final = L.MASK64
_SLOT_HEADER: Final = L.SLOT_HEADER
# Attempts to open a segment that keeps being destroyed under us before giving up.
_OPEN_ATTEMPTS: Final = 100
# Lock-free lookups a reader makes while writers keep changing what it looks at, before it
# reads under the lock.
_SPINS: Final = 8


def default_root() -> str:
    """The root used when neither ``root=`` nor ``SHMFS_ROOT`` names one."""
    return os.environ.get("SHMFS_ROOT") or f"/dev/shm/shmfs-{os.geteuid()}"


class TmpfsBackend(HoldsSegmentLock):
    """A segment stored as a directory of mapped files on tmpfs."""

    name = "tmpfs"
    native_codec = None
    lock_free_reads = True
    writes_pieces = True  # a large value is copied into its file once, not joined first
    trust_option = "trust_uids="

    # Class-level defaults so close() works on an instance whose __init__ failed part way.
    _root_fd = -1
    _dir_fd = -1
    _meta_fd = -1
    _notify_fd = -1
    _meta_mm: Any = None
    _index: Index | None = None
    _lock: SegmentLock | None = None
    # Set first thing in __init__; close() finds them with getattr after a failed one.
    _large: LargeVars
    _slabs: Slabs
    _views: Views
    #: The C get and put of small values (shmfs.hotpath), or None: pure Python, or closed.
    hot: TmpfsHot | None = None

    def __init__(
        self, key: int, root: str, root_fd: int, dir_fd: int, trust_uids: frozenset[int]
    ) -> None:
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
        self._slabs = Slabs(self._directory, self._trusted)
        self._large = LargeVars(key, self._directory, self._trusted)
        try:
            self._open_meta()
            self.size = int(self._meta[L.M_SIZE])
            self.perm = int(self._meta[L.M_PERM])
            self._views = Views(key, self.perm, self._directory)
            self._current_index()
        except BaseException:
            self._dir_fd = self._root_fd = -1  # the caller owns these until we succeed
            self.close()
            raise
        self._recoveries = self._meta[_RECOVERIES]
        self.hot = new_hot(self._large.vars, self._slabs.files, self._meta)
        self._reset_hot()
        if self.hot is not None and self._index is not None:
            self.hot.index(self._index.words, self._index.gen)

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

    def _directory(self) -> int:
        return self._dir_fd

    @property
    def dir_fd(self) -> int:
        """The segment directory's descriptor (for watchers)."""
        return self._dir_fd

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
        if self._meta[L.M_MAGIC] != L.META_MAGIC:
            raise CorruptSegment(f"segment {self.key}: metadata has a bad magic number")
        version = self._meta[L.M_VERSION]
        if version == 1:
            raise CorruptSegment(
                f"segment {self.key} was made by shmfs 0.1 (tmpfs format 1), which this shmfs "
                f"does not read: remove it with `shmfs rm --key {self.key} --root {self.root}` "
                "(its values go with it) and store them again"
            )
        if version != L.META_VERSION:
            raise CorruptSegment(
                f"segment {self.key}: metadata version {version}; "
                f"this shmfs reads {L.META_VERSION} (upgrade shmfs)"
            )
        if self._meta[_STATE] & _DESTROYED:
            raise SegmentNotFound(f"segment {self.key} was destroyed", key=self.key)
        self._lock = SegmentLock(fd, f"segment {self.key}")

    def _current_index(self) -> Index:
        """The mapping of the index the metadata names, remapped if it was replaced."""
        for _ in range(_OPEN_ATTEMPTS):
            gen = int(self._meta[_INDEX_GEN])
            index = self._index
            if index is not None and index.gen == gen:
                return index
            try:
                fd = os.open(index_name(gen), sd.OPEN_RW, dir_fd=self._dir_fd)
                writable = True
            except PermissionError:
                fd = os.open(index_name(gen), sd.OPEN_RO, dir_fd=self._dir_fd)
                writable = False
            except FileNotFoundError:
                if self._meta[_INDEX_GEN] != gen:
                    continue  # replaced again while we opened it
                self._check()
                raise CorruptSegment(f"segment {self.key}: its index file is missing") from None
            except OSError as exc:
                raise translate(exc, f"segment {self.key}: cannot open its index") from exc
            try:
                fresh = Index(fd, gen, writable=writable)
            except CorruptSegment as exc:
                raise CorruptSegment(f"segment {self.key}: {exc}", key=self.key) from exc
            finally:
                os.close(fd)
            self._index = fresh
            if index is not None:
                index.close()
            if self.hot is not None:
                self.hot.index(fresh.words, gen)
            return fresh
        raise CorruptSegment(f"segment {self.key}: its index keeps being replaced")

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
        inherited = (self._dir_fd, self._meta_fd, self._root_fd, self._notify_fd)
        try:
            self._dir_fd = open_dir(".", inherited[0])
            self._meta_fd = os.open(sd.META_NAME, sd.OPEN_RW, dir_fd=self._dir_fd)
            self._root_fd = open_dir(".", inherited[2], search_only=True)
        except OSError as exc:
            raise translate(exc, f"segment {self.key}: cannot reopen after fork") from exc
        self._lock = SegmentLock(self._meta_fd, f"segment {self.key}")
        self._notify_fd = -1
        self._views.after_fork()
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

    def is_open(self) -> bool:
        """Whether this handle is still open (for watchers)."""
        return self._meta_mm is not None

    def close(self) -> None:
        """Unmap and close everything this handle opened. Idempotent."""
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
        for attr in ("_notify_fd", "_meta_fd", "_dir_fd", "_root_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                setattr(self, attr, -1)
                with contextlib.suppress(OSError):
                    os.close(fd)

    def destroy(self) -> None:
        """Mark destroyed, unpublish, then zero and remove every file. Lock held."""
        self._check()
        self._meta[_STATE] = self._meta[_STATE] | _DESTROYED
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
        self._large.close()

    # ------------------------------------------------------------------------ locking

    def acquire(self, timeout: float | None) -> None:
        """Take the segment lock; refuse a destroyed segment; repair after a dead writer."""
        self._check()
        assert self._lock is not None
        self._lock.acquire(timeout)
        state = self._meta[_STATE]
        if state & _DESTROYED:
            self._lock.release()
            raise SegmentNotFound(f"segment {self.key} was destroyed", key=self.key)
        if state & _DIRTY:
            try:
                self._recover()
            except BaseException:
                self._lock.release()
                raise
        if self._meta[_RECOVERIES] != self._recoveries:
            self._forget_mappings()

    def _forget_mappings(self) -> None:
        """Drop every cached large-variable mapping: a writer died between publishing a file
        and retiring the one it replaced, so a mapping we hold may be of a file no longer in
        the segment. Slab files are never replaced: their mappings stay."""
        self._large.close()
        self._recoveries = self._meta[_RECOVERIES]
        self._reset_hot()

    def _recover_if_dirty(self) -> None:
        if self._meta[_STATE] & _DIRTY:
            self.acquire(None)  # acquire() repairs
            self.release()

    def _recover_if_abandoned(self) -> None:
        """DIRTY and the lock free: the writer died, so repair now rather than wait for the
        next writer."""
        assert self._lock is not None
        if self._lock.try_lock():
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
        if self._large.var(index) is None:
            return None
        return self._large.length(index)

    # ---------------------------------------------------------------------- reading

    def read(self, index: int) -> bytes | memoryview | Split | None:
        """Return the current bytes of ``index`` without taking the lock, or ``None``."""
        if self._epoch != fork_epoch():
            self._after_fork()
        meta = self._meta
        state = meta[_STATE]
        # DIRTY says a writer is mid-change, or died there; the writer's pid rides along, so a
        # reader racing a live writer does not try its lock on every get.
        if state & _DIRTY and not pid_alive(state >> 32):
            self._recover_if_abandoned()
        if meta[_RECOVERIES] != self._recoveries:
            self._forget_mappings()
        key = index & _M64
        for _ in range(_SPINS):
            gen = meta[_INDEX_GEN]
            index_map = self._index
            if index_map is None or index_map.gen != gen:
                index_map = self._current_index()
            loc = index_map.find(key)[0]
            if loc == _EMPTY:
                if meta[_INDEX_GEN] != gen:
                    continue  # the index was replaced while we looked
                if meta[_STATE] & _DESTROYED:
                    self._check()  # absent because destroyed: say so
                return None
            if loc == _LARGE:
                found = self._read_large(index, index_map, gen)
                if found == CONTENDED:
                    break
            else:
                found = self._read_slot(index, index_map, loc, gen)
            if found is not None:
                return found
        return self._read_locked(index)

    def _read_large(
        self, index: int, index_map: Index, gen: int
    ) -> bytes | memoryview | Split | None:
        """The frame in ``index``'s own file, if the index still names that file; ``None``:
        look again; ``CONTENDED``: read under the lock."""
        data = self._large.read(index)
        if data is GONE or data == CONTENDED:
            return data  # GONE: made small, or removed, since we looked
        # The file is found by name, and a writer renames a new one into place before the index
        # names it: if the index no longer says LARGE, what we read may be a value not yet
        # published, newer than the one the index names. Look again.
        if self._meta[_INDEX_GEN] != gen or index_map.find(index & _M64)[0] != _LARGE:
            return None
        return data

    def _read_slot(self, index: int, index_map: Index, loc: int, gen: int) -> bytes | None:
        """The frame in slot ``loc``, if it still holds ``index`` and the index ``gen`` is still
        the current one; ``None``: look again."""
        key = index & _M64
        try:
            data = self._slabs.read(loc, key)
        except CorruptSegment:
            if self._meta[_INDEX_GEN] != gen or index_map.find(key)[0] != loc:
                return None  # a stale location: the slot was reused
            raise self._damaged(index, "its index entry names no slot") from None
        if data is None or self._meta[_INDEX_GEN] != gen:
            return None
        self._last.value = (index, self._slabs.trusted(loc))
        return data

    def _damaged(self, index: int, what: str) -> CorruptSegment:
        return CorruptSegment(
            f"segment {self.key} index {index}: {what}", key=self.key, index=index
        )

    def _read_locked(self, index: int) -> bytes | memoryview | Split | None:
        """Read with no writer running: anything but a value or absence is damage."""
        self.acquire(None)
        try:
            loc = self._current_index().find(index & _M64)[0]
            if loc == _EMPTY:
                return None
            if loc == _LARGE:
                var = self._large.var(index)
                data = var.read() if var is not None else None
                if not data:
                    raise self._damaged(index, "its file is missing or inconsistent")
                return data
            try:
                frame = self._slabs.frame(loc, index & _M64)
            except CorruptSegment as exc:
                raise self._damaged(index, str(exc)) from None
            self._last.value = (index, self._slabs.trusted(loc))
            return frame
        finally:
            self.release()

    def trusted(self, index: int) -> bool:
        """Whether only trusted uids could have written what ``read(index)`` returned."""
        last = getattr(self._last, "value", None)
        if last is not None and last[0] == index:
            self._last.value = None  # it speaks for one read only
            return bool(last[1])
        return self._large.trusted(index)

    def _trusted(self, st: os.stat_result) -> bool:
        return self._dir_trusted and st.st_uid in self._trust_uids and not writable_by_others(st)

    def version(self, index: int) -> object:
        """A slot's seal, or a file's inode and control word: every write changes it."""
        self._check()
        loc = self._current_index().find(index & _M64)[0]
        if loc == _EMPTY:
            return None
        if loc == _LARGE:
            var = self._large.var(index)
            return None if var is None else var.version
        try:
            return (loc, self._slabs.seal(loc))
        except CorruptSegment:
            return (loc, -1)

    # ---------------------------------------------------------------------- writing

    def write(self, index: int, data: bytes | Pieces) -> None:
        """Store ``data`` at ``index``: in a slot, or in a file of its own if too big. Lock
        held."""
        self._check()
        meta = self._meta
        index_map = self._current_index()
        key = index & _M64
        loc, word = index_map.find(key)
        old = self._length(index, loc)
        used = meta[_USED]
        if used - old + len(data) > self.size:
            raise segment_full(self.key, index, len(data), self.size, used - old)
        number = L.class_for(len(data) + _SLOT_HEADER)
        meta[_STATE] = self._dirty_tag  # DIRTY: a death from here on is repaired
        # Growing the index, storing a large value and taking a slot each either succeed or
        # fail having changed nothing the index names (an index or file not yet published is
        # removed as it fails): a failure there (ENOSPC, say) needs no recovery.
        changed = False
        try:
            if loc <= _TOMB and index_map.full():
                index_map = self._grow()
                loc, word = index_map.find(key)
            if number < 0:
                self._write_large(index, data, loc)
                new = _LARGE
            else:
                new = self._slabs.allocate(meta, number, file_mode(self.perm), _tmp_name())
            changed = True
            if number >= 0:
                meta[_STAMP] = stamp = meta[_STAMP] + 1
                frame = data if isinstance(data, bytes) else b"".join(data.parts)
                self._slabs.write(new, key, frame, stamp)
            self._publish(index_map, word, key, loc, new)
            self._unpublished(index, loc, new)
        except OSError as exc:
            self._failed(repair=changed)
            raise translate(exc, f"segment {self.key}: cannot store index {index}") from exc
        except BaseException:
            self._failed(repair=True)  # stopped anywhere (KeyboardInterrupt): recount
            raise
        self._changed(used - old + len(data), 1 if loc <= _TOMB else 0)

    def _length(self, index: int, loc: int) -> int:
        """The length of the value ``loc`` names now. Lock held."""
        if loc <= _TOMB:
            return 0
        if loc == _LARGE:
            return self._large.length(index)
        try:
            return len(self._slabs.frame(loc, index & _M64))
        except CorruptSegment:
            return 0  # damage: overwriting or removing it is how a user clears it

    def _write_large(self, index: int, data: bytes | Pieces, loc: int) -> None:
        if loc != _LARGE:
            self._large.forget(index)  # a file left by a writer that died is not the value
        self._large.store(index, data, perm=self.perm, viewed=self._views.viewed(self._meta))

    @staticmethod
    def _publish(index_map: Index, word: int, key: int, loc: int, new: int) -> None:
        """Make the index name ``new``: one store over a live entry, else an insert."""
        if loc > _TOMB:
            if new != loc:
                index_map.words[word] = new
        else:
            index_map.insert(word, key, new)

    def _unpublished(self, index: int, loc: int, new: int) -> None:
        """Free what the index named before, now that it names ``new``. Lock held."""
        if loc == _LARGE and new != _LARGE:
            self._large.remove(index, scrub=not self._views.viewed(self._meta))
        elif loc > _LARGE:
            self._slabs.release(loc, self._meta)

    def _grow(self) -> Index:
        """Replace the index by one with room (tombstones dropped), published with one store.
        Lock held, DIRTY set."""
        old = self._current_index()
        gen = old.gen + 1
        name = index_name(gen)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self._dir_fd)  # built by a writer that died before publishing
        create_index(  # tombstones are not copied: the new table is sized for the live entries
            self._dir_fd,
            name,
            gen,
            shift_for(old.live_count()),
            copy_from=old,
            mode=file_mode(self.perm),
        )
        self._meta[_INDEX_GEN] = gen
        with contextlib.suppress(FileNotFoundError):
            os.unlink(index_name(old.gen), dir_fd=self._dir_fd)  # mappings of it stay valid
        return self._current_index()

    def _failed(self, *, repair: bool) -> None:
        """A change failed and we live on. If it may have changed something, leave DIRTY,
        naming no live writer, for a recovery (at our own next lock, or the next holder's). If
        it changed nothing, remove what it may have left (a file of ours not yet published, an
        index not yet published) and clear DIRTY; if even that fails, leave DIRTY too."""
        if not repair:
            current = index_name(int(self._meta[_INDEX_GEN]))
            mine = f".tmp-{os.getpid()}-"
            try:
                for name in os.listdir(self._dir_fd):
                    if name.startswith(mine) or (name.startswith(".index-") and name != current):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(name, dir_fd=self._dir_fd)
            except OSError:
                repair = True
        self._meta[_STATE] = _DIRTY if repair else 0

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

    def delete(self, index: int) -> bool:
        """Unpublish ``index`` and zero its bytes; whether it existed. Lock held."""
        self._check()
        index_map = self._current_index()
        loc, word = index_map.find(index & _M64)
        if loc <= _TOMB:
            return False
        meta = self._meta
        length = self._length(index, loc)
        meta[_STATE] = self._dirty_tag
        try:
            index_map.words[word] = _TOMB
            self._unpublished(index, loc, _TOMB)
        except OSError as exc:
            self._failed(repair=True)
            raise translate(exc, f"segment {self.key}: cannot remove index {index}") from exc
        except BaseException:
            self._failed(repair=True)
            raise
        self._changed(meta[_USED] - length, -1)
        return True

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

    # ------------------------------------------------------------------------ views

    @contextlib.contextmanager
    def pin(self, index: int, timeout: float | None) -> Iterator[memoryview | None]:
        """The current frame of ``index``, unchanging until the block ends (a large value in
        place, a slot's frame as a copy: a few KiB at most); ``None`` if it holds no value."""
        key = index & _M64
        frame = None
        self.acquire(timeout)
        try:
            loc = self._current_index().find(key)[0]
            if loc == _LARGE:
                var = self._large.var(index)
                if var is not None:
                    frame = var.current()
                    self._views.hold(self._meta)
            elif loc > _LARGE:
                try:
                    frame = memoryview(self._slabs.frame(loc, key)).toreadonly()
                except CorruptSegment as exc:
                    raise self._damaged(index, str(exc)) from None
                self._last.value = (index, self._slabs.trusted(loc))
        finally:
            self.release()
        if frame is None or loc != _LARGE:
            yield frame
            return
        try:
            yield frame
        finally:
            with contextlib.suppress(BufferError):  # still exported (a numpy array, say)
                frame.release()
            self.acquire(timeout)
            try:
                self._views.drop(self._meta)
            finally:
                self.release()

    def _notify(self) -> None:
        """Wake waiters: a write to ``.notify`` is an inotify event; mapped writes raise none."""
        try:
            if self._notify_fd < 0:
                self._notify_fd = os.open(sd.NOTIFY_NAME, sd.OPEN_RW, dir_fd=self._dir_fd)
            os.pwrite(self._notify_fd, self._meta[_GENERATION].to_bytes(8, "little"), 0)
        except OSError:
            pass  # waiters also re-check on their own every second; a lost wake-up only delays

    # ---------------------------------------------------------------------- reporting

    def indices(self) -> list[int]:
        """Indices holding values, ascending."""
        self._check()
        keys = [key for key, _ in self._current_index().entries()]
        return sorted(key - (1 << 64) if key >> 63 else key for key in keys)

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
            created=meta[L.M_CREATED] / 1e9,
            creator_pid=int(meta[L.M_CREATOR]),
            storage=self._storage(),
        )

    def _storage(self) -> dict[str, int]:
        """Bytes of tmpfs by kind of file, and how many slot bytes hold no value (free slots,
        and the room left in each used slot): what ``shmfs stat`` reports as overhead."""
        kinds = {"slabs": 0, "index": 0, "large": 0, "other": 0}
        try:
            for entry in os.scandir(self._dir_fd):
                size = entry.stat(follow_symlinks=False).st_blocks * 512
                if entry.name.startswith(".slab-"):
                    kinds["slabs"] += size
                elif entry.name.startswith(".index-"):
                    kinds["index"] += size
                elif sd.index_of(entry.name) is not None:
                    kinds["large"] += size
                else:
                    kinds["other"] += size
        except OSError as exc:
            raise translate(exc, f"segment {self.key}: cannot list") from exc
        classes = Counter(loc >> L.LOC_CLASS_SHIFT for _, loc in self._current_index().entries())
        in_slots = sum(
            L.CLASSES[tag - 1] * count for tag, count in classes.items() if 0 < tag <= L.NCLASSES
        )
        kinds["slot_bytes_in_use"] = in_slots
        kinds["slot_bytes_unused"] = max(kinds["slabs"] - in_slots, 0)
        return kinds

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


def _tmp_name() -> str:
    return f".tmp-{sd.token()}"


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
