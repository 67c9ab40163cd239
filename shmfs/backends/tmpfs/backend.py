"""The tmpfs backend: a segment is a directory; small variables share slab files, found through
a mapped index, and a large variable has a file of its own.

What lives where is in ``segdir.py`` (the directory and its metadata page) and ``layout.py``
(every number of the format); the index in ``index.py``, slots in ``slabs.py``, large files in
``largefile.py`` and ``largevars.py``, views in ``views.py``, waiters in ``waiters.py``, and the
handle's life (opening, locking, recovery, closing) in ``handle.py``. This module ties them to
the Backend protocol: reads, writes, removals, views and reports
(``docs/tmpfs-format.md`` draws the protocols).

Longer than 400 lines because a batch write (``write_many``) shares the single write's state and
steps (the index, the slots, the DIRTY protocol); it adds one publication step to them.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import Final

from shmfs.backends import SegmentInfo, segment_full
from shmfs.backends.fsutil import file_mode, translate
from shmfs.backends.tmpfs import layout as L
from shmfs.backends.tmpfs import segdir as sd
from shmfs.backends.tmpfs.check import check_segment, destroy_damaged, placed
from shmfs.backends.tmpfs.handle import TmpfsHandle, default_root, lock_free
from shmfs.backends.tmpfs.index import Index, create_index, index_name, shift_for
from shmfs.backends.tmpfs.largefile import CONTENDED
from shmfs.backends.tmpfs.largevars import GONE
from shmfs.errors import CorruptSegment, SegmentDetached
from shmfs.forking import fork_epoch, pid_alive
from shmfs.frame import Pieces, Split

__all__ = ["TmpfsBackend", "default_root"]

_STATE, _DIRTY, _DESTROYED = L.M_STATE, L.STATE_DIRTY, L.STATE_DESTROYED
_USED, _COUNT, _GENERATION, _WAITERS = L.M_USED, L.M_COUNT, L.M_GENERATION, L.M_WAITERS
_RECOVERIES, _INDEX_GEN, _STAMP = L.M_RECOVERIES, L.M_INDEX_GEN, L.M_STAMP
_EMPTY, _TOMB, _LARGE = L.LOC_EMPTY, L.LOC_TOMB, L.LOC_LARGE
_M64: Final = L.MASK64
_SLOT_HEADER: Final = L.SLOT_HEADER
# Lock-free lookups a reader makes while writers keep changing what it looks at, before it
# reads under the lock.
_SPINS: Final = 8
# A reader that may not take the lock (read-only access) keeps looking, pausing between tries,
# this long before it calls what it finds damage: a writer changes one variable in
# microseconds, so only a stream of writers to the same variable, or damage, lasts this long.
_PATIENCE: Final = 2.0
_AGAIN: Final = object()


class TmpfsBackend(TmpfsHandle):
    """A segment stored as a directory of mapped files on tmpfs."""

    name = "tmpfs"
    native_codec = None
    lock_free_reads = True
    writes_pieces = True  # a large value is copied into its file once, not joined first
    trust_option = "trust_uids="
    # shmfs.check and shmfs.destroy: they work on the files, not through a handle.
    check_segment = staticmethod(check_segment)
    destroy_damaged = staticmethod(destroy_damaged)

    def read(self, index: int) -> bytes | memoryview | Split | None:
        """Return the current bytes of ``index`` without taking the lock, or ``None``."""
        # lock_free's counting, written out: every get that misses the C path comes here.
        readers = self._readers
        readers.append(None)
        try:
            if self._close_due:
                raise SegmentDetached(f"segment {self.key}: this handle was detached", key=self.key)
            return self._read(index)
        finally:
            readers.pop()
            if self._close_due and not readers:
                self._close_files()

    def _read(self, index: int) -> bytes | memoryview | Split | None:
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
        found = self._look(index)
        if found is not _AGAIN:
            return found  # type: ignore[return-value]  # not _AGAIN: what read() returns
        if self._lock is None:
            return self._read_patiently(index)
        return self._read_locked(index)

    def _look(self, index: int) -> bytes | memoryview | Split | object | None:
        """``read``'s lock-free part: the value, ``None`` (absent), or ``_AGAIN`` (writers kept
        overtaking us)."""
        meta = self._meta
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
        return _AGAIN

    def _read_patiently(self, index: int) -> bytes | memoryview | Split | None:
        """``read`` for a handle that may not take the lock: look again, pausing longer each
        time, for up to ``_PATIENCE`` seconds."""
        pause, deadline = 1e-5, time.monotonic() + _PATIENCE
        while time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(pause * 2, 0.01)
            found = self._look(index)
            if found is not _AGAIN:
                return found  # type: ignore[return-value]  # not _AGAIN
        raise self._damaged(index, f"no whole value found in {_PATIENCE:g} s of looking")

    def _read_large(
        self, index: int, index_map: Index, gen: int
    ) -> bytes | memoryview | Split | None:
        """The frame in ``index``'s own file, if the index still names that file; ``None``:
        look again; ``CONTENDED``: read under the lock."""
        try:
            data, trusted = self._large.read(index)
        except CorruptSegment as exc:
            if self._meta[_INDEX_GEN] != gen or index_map.find(index & _M64)[0] != _LARGE:
                return None  # not the file the index names now: look again
            raise self._damaged(index, str(exc)) from None
        if data is GONE or data == CONTENDED:
            return data  # GONE: made small, or removed, since we looked
        # The file is found by name, and a writer renames a new one into place before the index
        # names it: if the index no longer says LARGE, what we read may be a value not yet
        # published, newer than the one the index names. Look again.
        if self._meta[_INDEX_GEN] != gen or index_map.find(index & _M64)[0] != _LARGE:
            return None
        self._last.value = (index, trusted)  # the file read, not the one there when asked
        return data

    def _read_slot(self, index: int, index_map: Index, loc: int, gen: int) -> bytes | None:
        """The frame in slot ``loc``, if it still holds ``index`` and the index ``gen`` is still
        the current one; ``None``: look again."""
        key = index & _M64
        try:
            data, trusted = self._slabs.read(loc, key)
        except CorruptSegment:
            if self._meta[_INDEX_GEN] != gen or index_map.find(key)[0] != loc:
                return None  # a stale location: the slot was reused
            raise self._damaged(index, "its index entry names no slot it can read") from None
        if data is None or self._meta[_INDEX_GEN] != gen:
            return None
        self._last.value = (index, trusted)
        return data

    def _read_locked(self, index: int) -> bytes | memoryview | Split | None:
        """Read with no writer running: anything but a value or absence is damage."""
        self.acquire(None)
        try:
            loc = self._current_index().find(index & _M64)[0]
            if loc == _EMPTY:
                return None
            if loc == _LARGE:
                try:
                    var = self._large.var(index)
                except CorruptSegment as exc:
                    raise self._damaged(index, str(exc)) from None
                data = var.read() if var is not None else None
                if not data or var is None:
                    raise self._damaged(index, "its file is missing or inconsistent")
                self._last.value = (index, var.trusted)
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
        return self._file_trusted(index)

    @lock_free
    def _file_trusted(self, index: int) -> bool:
        return self._large.trusted(index)

    @lock_free  # it reads the index, which a detach may close meanwhile
    def where(self, index: int) -> tuple[str | None, int | None]:
        """The file holding ``index``'s bytes and the offset of its frame there, for messages
        about damage (``shmfs.damage``)."""
        return placed(self, index)

    @lock_free
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

    def write(self, index: int, data: bytes | Pieces) -> None:
        """Store ``data`` at ``index``: in a slot, or in a file of its own if too big. Lock
        held."""
        self._check_writable()
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
                changed, new = True, _LARGE
            else:
                new = self._slabs.allocate(meta, number, file_mode(self.perm), _tmp_name)
                changed = True
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

    def write_many(self, items: list[tuple[int, bytes | Pieces]]) -> None:
        """Store every pair, all or none. Lock held.

        The new values go into new slots and files that no index names yet; then one new index
        naming them all is published with one store of its generation, as ``_grow`` publishes
        one. A writer killed before that store leaves every old value (recovery frees what the
        old index does not name), after it every new one. A value with a file of its own that
        replaces a value with a file of its own is written after the publication, each on its
        own (a file is found by its index's name: there is no second place for it).
        """
        if len(items) < 2:
            for index, data in items:
                self.write(index, data)
            return
        self._check_writable()
        meta = self._meta
        old_map = self._current_index()
        plan = [(index, index & _M64, old_map.find(index & _M64)[0], data) for index, data in items]
        freed = sum(self._length(index, loc) for index, _, loc, _ in plan)
        needed = sum(len(data) for *_, data in plan)
        used = meta[_USED]
        if used - freed + needed > self.size:
            raise segment_full(self.key, plan[0][0], needed, self.size, used - freed)
        meta[_STATE] = self._dirty_tag  # DIRTY: a death from here on is repaired
        placed: list[tuple[int, int, int, int]] = []  # index, key, old location, new location
        later: list[tuple[int, bytes | Pieces]] = []
        changed = False
        try:
            for index, key, loc, data in plan:
                number = L.class_for(len(data) + _SLOT_HEADER)
                changed = True
                if number >= 0:
                    new = self._slabs.allocate(meta, number, file_mode(self.perm), _tmp_name)
                    meta[_STAMP] = stamp = meta[_STAMP] + 1
                    frame = data if isinstance(data, bytes) else b"".join(data.parts)
                    self._slabs.write(new, key, frame, stamp)
                    placed.append((index, key, loc, new))
                elif loc == _LARGE:
                    later.append((index, data))
                else:
                    self._write_large(index, data, loc)  # a file no index names yet
                    placed.append((index, key, loc, _LARGE))
            self._publish_index(old_map, placed)
            for index, _, loc, new in placed:
                self._unpublished(index, loc, new)
            for index, data in later:
                self._write_large(index, data, _LARGE)
        except OSError as exc:
            self._failed(repair=changed)
            raise translate(exc, f"segment {self.key}: cannot store a batch") from exc
        except BaseException:
            self._failed(repair=True)
            raise
        self._changed(used - freed + needed, sum(1 for p in placed if p[2] <= _TOMB))

    def _publish_index(self, old: Index, placed: list[tuple[int, int, int, int]]) -> None:
        """Publish a copy of ``old`` naming each ``(index, key, old, new location)``'s new
        location, with one store of its generation. Lock held, DIRTY set."""
        gen = old.gen + 1
        name = index_name(gen)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self._dir_fd)  # built by a writer that died before publishing
        added = sum(1 for *_, loc, _ in placed if loc <= _TOMB)
        mode = file_mode(self.perm)
        shift = shift_for(old.live_count() + added)
        create_index(self._dir_fd, name, gen, shift, copy_from=old, mode=mode)
        fd = os.open(name, sd.OPEN_RW, dir_fd=self._dir_fd)
        try:
            fresh = Index(fd, gen, writable=True)
        finally:
            os.close(fd)
        try:
            for _, key, _, new in placed:
                loc, word = fresh.find(key)
                if loc > _TOMB:
                    fresh.words[word] = new
                else:
                    fresh.insert(word, key, new)
        finally:
            fresh.close()
        self._meta[_INDEX_GEN] = gen  # the one store that publishes the whole batch
        with contextlib.suppress(FileNotFoundError):
            os.unlink(index_name(old.gen), dir_fd=self._dir_fd)  # mappings of it stay valid
        self._current_index()

    def _length(self, index: int, loc: int) -> int:
        """The length of the value ``loc`` names now. Lock held."""
        if loc <= _TOMB:
            return 0
        if loc == _LARGE:
            return self._large.length(index)
        try:
            return self._slabs.length(loc, index & _M64)
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
        self._check_writable()
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

    @contextlib.contextmanager
    def pin(self, index: int, timeout: float | None) -> Iterator[memoryview | None]:
        """The current frame of ``index``, unchanging until the block ends (a large value in
        place, a slot's frame as a copy: a few KiB at most); ``None`` if it holds no value."""
        key = index & _M64
        frame = None
        if self._lock is None:  # a reader: no views flock to take, so a copy, taken lock-free
            data = self.read(index)
            if data is not None and not isinstance(data, bytes | memoryview):
                data = b"".join(data)
            yield None if data is None else memoryview(bytes(data)).toreadonly()
            return
        self.acquire(timeout)
        try:
            loc = self._current_index().find(key)[0]
            if loc == _LARGE:
                var = self._large.var(index)
                if var is not None:
                    frame = var.current()
                    self._views.hold(self._meta)
                    self._last.value = (index, var.trusted)
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
            # A handle closed during the block (another thread detached it) let go of its
            # views flock as it closed: there is nothing left to drop, and no lock to take.
            with contextlib.suppress(SegmentDetached, ValueError):
                self.acquire(timeout)  # ValueError: its metadata view, released
                try:
                    self._views.drop(self._meta)
                finally:
                    self.release()

    @lock_free
    def indices(self) -> list[int]:
        """Indices holding values, ascending."""
        self._check()
        keys = [key for key, _ in self._current_index().entries()]
        return sorted(key - (1 << 64) if key >> 63 else key for key in keys)

    @lock_free
    def count(self) -> int:
        """Number of variables."""
        self._check()
        return int(self._meta[_COUNT])

    @lock_free
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


def _tmp_name() -> str:
    return f".tmp-{sd.token()}"
