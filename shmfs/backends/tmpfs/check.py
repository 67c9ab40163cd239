"""Checking and repairing a tmpfs segment, and removing one whose metadata is damaged.

``docs/tmpfs-format.md`` says what each file holds; this module verifies all of it under the
segment lock, working on the files themselves rather than through a handle, so that damage a
handle refuses to open (a bad metadata page, a missing or damaged index) can be looked at and
mended:

* the metadata page: size, magic, version, key, the index generation it names;
* the index: its header, an empty bucket to end every probe, its fill count, no index twice;
* every value the index names: its slot (in range, sealed, naming its variable, a length that
  fits) or its own file (a sound header), and its frame (header, length, checksum);
* the bookkeeping: the slab files' headers, the bump words, the free lists (free slots only, no
  loop), the counts of variables and bytes, and files nothing names.

Repairing rebuilds the metadata page's fixed words, the index from the slabs and large files
(when it is missing or damaged: every sealed slot names its variable, and the newest stamp
wins), a damaged slab file as an empty one; drops the variables whose bytes fail their checks;
then runs the recovery a dead writer's change gets (``recovery.py``: free lists, counts,
litter), which leaves what the index names and nothing else.

Its length (over 400 lines): one checker walks every structure of the format in order, each
check using what the one before established (the index's generation, the slab files, the large
files), and the repair needs every finding; the format's parts it reads already live in their
own modules.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

from shmfs.backends.fsutil import open_dir, translate, verify_owner
from shmfs.backends.tmpfs import layout as L
from shmfs.backends.tmpfs import segdir as sd
from shmfs.backends.tmpfs.index import Index, create_index, index_name, shift_for
from shmfs.backends.tmpfs.largefile import HEADER_SIZE, PAGE, unmapped_state
from shmfs.backends.tmpfs.largevars import LargeVars
from shmfs.backends.tmpfs.recovery import recover
from shmfs.backends.tmpfs.slabs import Slabs, create_slab, slab_name, split_location
from shmfs.errors import CorruptSegment, SegmentNotFound
from shmfs.forking import pid_alive
from shmfs.locking import SegmentLock

if TYPE_CHECKING:
    from shmfs.backends.tmpfs.backend import TmpfsBackend
    from shmfs.check import Outcome

__all__ = ["check_segment", "destroy_damaged", "placed"]

_M64: Final = L.MASK64
_DEFAULT_SIZE: Final = 10000  # attach()'s: a lost size word becomes at least this


def placed(backend: TmpfsBackend, index: int) -> tuple[str | None, int | None]:
    """``(file, offset)`` of the frame of ``index`` (for ``TmpfsBackend.where``)."""
    loc = backend._current_index().find(index & _M64)[0]  # this package's own
    if loc == L.LOC_LARGE:
        name = str(index)
        return os.path.join(backend.path, name), _large_offset(backend.dir_fd, name)
    if loc > L.LOC_LARGE:
        number, file, slot = split_location(loc)
        offset = L.SLAB_HEADER + slot * L.CLASSES[number] + L.SLOT_HEADER
        return os.path.join(backend.path, slab_name(number, file)), offset
    return None, None


def _large_offset(dir_fd: int, name: str) -> int:
    """Where a variable file's current frame starts; 0 if its header does not say."""
    fd = os.open(name, sd.OPEN_RO, dir_fd=dir_fd)
    try:
        state = unmapped_state(fd)
    finally:
        os.close(fd)
    return 0 if state is None else HEADER_SIZE + (state[0] & 1) * state[1]


def _signed(key: int) -> int:
    return key - (1 << 64) if key >> 63 else key


class _Segment:
    """The files of one segment directory, opened for checking. Lock held while in use."""

    def __init__(self, key: int, path: str, dir_fd: int, outcome: Outcome, *, repair: bool) -> None:
        self.key = key
        self.path = path
        self.dir_fd = dir_fd
        self.outcome = outcome
        self.repair = repair
        self.slabs = Slabs(lambda: dir_fd, lambda st: True)
        self.large = LargeVars(key, lambda: dir_fd, lambda st: True)
        self.meta: memoryview | None = None
        self._mm: mmap.mmap | None = None

    def note(self, what: str, **where: object) -> None:
        self.outcome.add(what, **where)

    def fixed(self, what: str) -> None:
        self.outcome.repairs.append(what)

    def mode(self) -> int:
        """The mode new files get: the metadata file's (the segment's perm)."""
        return stat.S_IMODE(os.stat(sd.META_NAME, dir_fd=self.dir_fd).st_mode)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def close(self) -> None:
        self.slabs.close()
        self.large.close()
        if self.meta is not None:
            self.meta.release()
        if self._mm is not None:
            self._mm.close()

    # ------------------------------------------------------------------ metadata

    def check_meta(self, fd: int) -> None:
        """The metadata page; repairing, its fixed words rewritten where they are wrong."""
        name = self.file(sd.META_NAME)
        size = os.fstat(fd).st_size
        if size != PAGE:
            self.note(f"the metadata file is {size} bytes, not {PAGE}", file=name, offset=0)
            if not self.repair:
                return
            os.ftruncate(fd, PAGE)
            self.fixed("metadata page restored to its size")
        self._mm = mmap.mmap(fd, PAGE)
        meta = self.meta = memoryview(self._mm).cast("Q")
        fixed_words = {
            L.M_MAGIC: (L.META_MAGIC, "magic"),
            L.M_VERSION: (L.META_VERSION, "version"),
            L.M_KEY: (self.key & _M64, "key"),
        }
        for word, (want, what) in fixed_words.items():
            if meta[word] != want:
                self.note(f"the metadata's {what} word is wrong", file=name, offset=word * 8)
                if self.repair:
                    meta[word] = want
                    self.fixed(f"metadata {what} rewritten")
        if meta[L.M_PERM] > 0o777:
            self.note("the metadata's perm word is out of range", file=name, offset=L.M_PERM * 8)
            if self.repair:
                meta[L.M_PERM] = stat.S_IMODE(os.fstat(fd).st_mode)
                self.fixed("metadata perm taken from the file's mode")
        state = int(meta[L.M_STATE])
        if state & L.STATE_DIRTY and not pid_alive(state >> 32):
            self.note("a writer died mid-change (the next attach recovers it)", file=name)

    # --------------------------------------------------------------------- index

    def open_index(self) -> Index | None:
        """The index the metadata names, or ``None`` (noted) if it is missing or damaged."""
        assert self.meta is not None
        gen = int(self.meta[L.M_INDEX_GEN])
        name = index_name(gen)
        try:
            fd = os.open(name, sd.OPEN_RW, dir_fd=self.dir_fd)
        except FileNotFoundError:
            self.note(f"the index file {name} the metadata names is missing")
            return None
        try:
            index = Index(fd, gen, writable=True)
        except CorruptSegment as exc:
            self.note(exc.message, file=self.file(name), offset=0)
            return None
        finally:
            os.close(fd)
        locs = index.words[L.IX_HEADER_WORDS :].tolist()[1::2]
        if L.LOC_EMPTY not in locs:
            self.note("the index has no empty bucket (a lookup of an absent index cannot end)")
            index.close()
            return None
        filled = len(locs) - locs.count(L.LOC_EMPTY)
        if index.filled != filled:
            self.note(
                f"the index's fill count says {index.filled}, its buckets {filled}",
                file=self.file(name),
                offset=L.IX_W_FILLED * 8,
            )
        return index

    def rebuild_index(self) -> Index:
        """A new index from what the slabs and large files hold, published. Lock held."""
        assert self.meta is not None
        found: dict[int, tuple[int, int]] = {}  # key -> (stamp, location)
        for key, stamp, loc in self._sealed_slots():
            if found.get(key, (-1, 0))[0] < stamp:
                found[key] = (stamp, loc)
        for name in os.listdir(self.dir_fd):
            index = sd.index_of(name)
            if index is not None and self._large_problem(index) is None:
                found[index & _M64] = (1 << 64, L.LOC_LARGE)  # renamed in after its slot
        gens = [int(n[7:]) for n in os.listdir(self.dir_fd) if _is_index(n)]
        gen = max([*gens, int(self.meta[L.M_INDEX_GEN])]) + 1
        entries = [(key, loc) for key, (_, loc) in found.items()]
        create_index(
            self.dir_fd,
            index_name(gen),
            gen,
            shift_for(len(entries)),
            entries=entries,
            mode=self.mode(),
        )
        self.meta[L.M_INDEX_GEN] = gen
        self.fixed(f"index rebuilt from the slabs and files ({len(entries)} variables)")
        fd = os.open(index_name(gen), sd.OPEN_RW, dir_fd=self.dir_fd)
        try:
            return Index(fd, gen, writable=True)
        finally:
            os.close(fd)

    def _sealed_slots(self) -> Iterator[tuple[int, int, int]]:
        """``(key, stamp, location)`` of every sealed slot whose frame passes its checks."""
        from shmfs.check import frame_problem  # noqa: PLC0415  # shmfs.check imports backends

        for number, file in self._slab_files():
            try:
                slab = self.slabs.file(number, file)
            except CorruptSegment:
                continue
            for slot in range(slab.slots):
                word = (L.SLAB_HEADER + slot * slab.slot_size) // L.WORD
                seal = slab.words[word]
                length = seal & L.SEAL_LENGTH_MASK
                if not seal or length + L.SLOT_HEADER > slab.slot_size:
                    continue
                start = word * L.WORD + L.SLOT_HEADER
                if frame_problem(slab.mm[start : start + length], None) is None:
                    loc = (number + 1) << L.LOC_CLASS_SHIFT | file << L.LOC_FILE_SHIFT | slot
                    yield int(slab.words[word + 1]), seal >> L.SEAL_LENGTH_BITS, loc

    def _slab_files(self) -> list[tuple[int, int]]:
        files = []
        for name in os.listdir(self.dir_fd):
            if name.startswith(".slab-"):
                with contextlib.suppress(ValueError):
                    number, file = (int(part) for part in name[6:].split("-"))
                    files.append((number, file))
        return sorted(files)

    # -------------------------------------------------------------------- values

    def check_values(self, index: Index) -> tuple[int, int]:
        """Every value the index names; repairing, the damaged ones dropped. Returns how many
        the index names and the bytes of the sound ones (negative: a value is damaged, so its
        length, and the total, are not known)."""
        from shmfs.check import frame_problem  # noqa: PLC0415

        seen: set[int] = set()
        count = used = 0
        damaged = False
        for word, key, loc in list(index.live()):
            signed = _signed(key)
            file: str | None = None
            offset: int | None = None
            length = 0
            if key in seen:
                problem: str | None = "the index names this variable twice"
            elif loc == L.LOC_LARGE:
                problem = self._large_problem(signed)
                file, offset = self.file(str(signed)), 0
                if problem is None:
                    length = self.large.length(signed)
            else:
                problem, file, offset, length = self._slot_problem(key, loc, frame_problem)
            seen.add(key)
            count += 1
            if problem is None:
                used += length
                continue
            damaged = True  # a damaged value's length is not known, nor the total
            self.note(problem, index=signed, file=file, offset=offset)
            if self.repair:
                index.words[word] = L.LOC_TOMB
                self.outcome.dropped.append(signed)
        return count, -1 if damaged else used

    def _slot_problem(
        self, key: int, loc: int, frame_problem: Callable[..., str | None]
    ) -> tuple[str | None, str | None, int | None, int]:
        try:
            number, file, slot = split_location(loc)
        except CorruptSegment:
            return f"its index entry names no slot ({loc:#x})", None, None, 0
        name = self.file(slab_name(number, file))
        offset = L.SLAB_HEADER + slot * L.CLASSES[number]
        try:
            length = self.slabs.length(loc, key)
        except CorruptSegment as exc:
            return exc.message, name, offset, 0
        slab, word = self.slabs.slot(loc)
        start = word * L.WORD + L.SLOT_HEADER
        problem = frame_problem(slab.mm[start : start + length], None)
        return problem, name, offset + (L.SLOT_HEADER if problem else 0), length

    def _large_problem(self, index: int) -> str | None:
        from shmfs.check import frame_problem  # noqa: PLC0415

        self.large.forget(index)
        try:
            var = self.large.var(index)
            if var is None:
                return "its file is missing"
            return frame_problem(var.current(), None)
        except CorruptSegment as exc:
            return exc.message
        finally:
            self.large.forget(index)

    # --------------------------------------------------------------- bookkeeping

    def check_slabs(self) -> None:
        """Slab headers, bump words and free lists; repairing, damaged files made empty."""
        assert self.meta is not None
        meta = self.meta
        for number, file in self._slab_files():
            try:
                self.slabs.file(number, file)
            except CorruptSegment as exc:
                name = slab_name(number, file)
                self.note(exc.message, file=self.file(name), offset=0)
                if self.repair:
                    self._renew_slab(number, file)
                    self.fixed(f"slab file {name} made an empty one (its values are dropped)")
        present = self._slab_files()
        for number in range(L.NCLASSES):
            head = L.M_CLASSES + 2 * number
            bump = int(meta[head + 1])
            last, next_slot = bump >> 32, bump & 0xFFFF_FFFF
            files = {file for n, file in present if n == number}
            if bump and (last >= L.LOC_FILES or next_slot > L.slots_in(number, last)):
                self.note(f"slot class {number}'s bump word names no slot", offset=head * 8 + 8)
                if self.repair:  # the files there count as used up: recovery frees their slots
                    last = max(files, default=0)
                    meta[head + 1] = last << 32 | L.slots_in(number, last) if files else 0
                    self.fixed(f"slot class {number}'s bump word rebuilt")
                continue
            for file in range(last + 1 if bump else 0):
                if file not in files:
                    name = slab_name(number, file)
                    self.note("a slab file is missing", file=self.file(name))
                    if self.repair:
                        create_slab(self.dir_fd, number, file, self.mode(), f".tmp-{sd.token()}")
                        self.fixed(f"slab file {name} replaced by an empty one")
            if self._free_list_problem(number):
                self.note(f"slot class {number}'s free list names a slot in use, or loops")

    def _renew_slab(self, number: int, file: int) -> None:
        """Make a damaged slab file a sound, empty one in place: the same inode, so that
        processes mapping it keep seeing what everyone sees (a slab file is never replaced).
        The index entries naming it are dropped by ``check_values``."""
        size = L.slab_size(number, file)
        fd = os.open(slab_name(number, file), sd.OPEN_RW, dir_fd=self.dir_fd)
        try:
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)
            os.posix_fallocate(fd, 0, size)
            zeros = bytes(min(size, 1 << 20))
            for offset in range(0, size, len(zeros)):
                os.pwrite(fd, zeros[: size - offset], offset)
            header = memoryview(bytearray(L.SLAB_HEADER)).cast("Q")
            header[L.SLAB_W_MAGIC], header[L.SLAB_W_VERSION] = L.SLAB_MAGIC, L.SLAB_VERSION
            header[L.SLAB_W_CLASS], header[L.SLAB_W_FILE] = number, file
            os.pwrite(fd, header.tobytes(), 0)
        finally:
            os.close(fd)

    def _free_list_problem(self, number: int) -> bool:
        assert self.meta is not None
        loc = int(self.meta[L.M_CLASSES + 2 * number])
        steps = 0
        while loc:
            steps += 1
            try:
                if (loc >> L.LOC_CLASS_SHIFT) - 1 != number or steps > L.LOC_SLOTS:
                    return True
                slab, word = self.slabs.slot(loc)
            except CorruptSegment:
                return True
            if slab.words[word]:
                return True
            loc = int(slab.words[word + 1])
        return False

    def check_counts(self, count: int, used: int) -> None:
        assert self.meta is not None
        meta = self.meta
        name = self.file(sd.META_NAME)
        if meta[L.M_COUNT] != count:
            self.note(
                f"the metadata counts {meta[L.M_COUNT]} variables; the index names {count}",
                file=name,
                offset=L.M_COUNT * 8,
            )
        if used >= 0 and meta[L.M_USED] != used:
            self.note(
                f"the metadata counts {meta[L.M_USED]} bytes of values; they take {used}",
                file=name,
                offset=L.M_USED * 8,
            )
        if not 0 < meta[L.M_SIZE] < 1 << 48:
            self.note("the metadata's size word is out of range", file=name, offset=L.M_SIZE * 8)

    def check_litter(self, index: Index) -> None:
        """Files nothing names: temporary files, old indexes, unnamed large files, and sealed
        slots the index does not name."""
        assert self.meta is not None
        current = index_name(int(self.meta[L.M_INDEX_GEN]))
        large = {_signed(key) for key, loc in index.entries() if loc == L.LOC_LARGE}
        for name in os.listdir(self.dir_fd):
            found = sd.index_of(name)
            if name.startswith(".tmp-") or (_is_index(name) and name != current):
                self.note("a file left by a writer that died", file=self.file(name))
            elif found is not None and found not in large:
                self.note("a variable file the index does not name", file=self.file(name))
        named = {loc for _, loc in index.entries() if loc > L.LOC_LARGE}
        for _, _, loc in self._sealed_slots():
            if loc not in named:
                number, file, slot = split_location(loc)
                self.note(
                    "a sealed slot the index does not name",
                    file=self.file(slab_name(number, file)),
                    offset=L.SLAB_HEADER + slot * L.CLASSES[number],
                )

    def recover(self, index: Index) -> None:
        """``recovery.py``'s rebuild of free lists, counts and litter; handles then drop
        their mappings of large files. Lock held."""
        assert self.meta is not None
        meta = self.meta

        def large_length(index: int) -> int | None:
            return None if self._large_problem(index) else self.large.length(index)

        meta[L.M_STATE] = L.STATE_DIRTY
        recover(self.dir_fd, meta, index, self.slabs, large_length)
        if not 0 < meta[L.M_SIZE] < 1 << 48:
            meta[L.M_SIZE] = max(int(meta[L.M_USED]), _DEFAULT_SIZE)
            self.fixed(f"size set to {meta[L.M_SIZE]} (the recorded one was lost)")
        meta[L.M_RECOVERIES] += 1
        meta[L.M_GENERATION] += 1
        meta[L.M_STATE] = 0
        self.fixed("free lists, counts and stray files rebuilt")


def _is_index(name: str) -> bool:
    return name.startswith(".index-") and name[7:].isdigit()


def check_segment(
    key: int, *, root: str | None, trust_uids: frozenset[int], repair: bool
) -> Outcome:
    """Check segment ``key`` under ``root``; with ``repair``, mend it (see the module's
    docstring). The segment lock is held throughout.

    Raises:
        SegmentNotFound: no such segment.
        UnsafeSegment: a symlink or a foreign owner is in the way.
    """
    from shmfs.backends.tmpfs.handle import default_root  # noqa: PLC0415  # imports backend
    from shmfs.check import Outcome  # noqa: PLC0415  # shmfs.check imports the backends

    outcome = Outcome()
    root = root or default_root()
    with _opened(key, root, trust_uids) as (dir_fd, meta_fd):
        seg = _Segment(key, os.path.join(root, str(key)), dir_fd, outcome, repair=repair)
        try:
            seg.check_meta(meta_fd)
            if seg.meta is None:
                return outcome
            if seg.meta[L.M_STATE] & L.STATE_DESTROYED:
                raise SegmentNotFound(f"segment {key} was destroyed", key=key)
            seg.check_slabs()
            index = seg.open_index()
            if index is None:
                if not repair:
                    return outcome
                index = seg.rebuild_index()
            count, used = seg.check_values(index)
            if repair:
                seg.recover(index)
            else:
                seg.check_counts(count, used)
                seg.check_litter(index)
            index.close()
        except OSError as exc:
            raise translate(exc, f"segment {key}: cannot check it") from exc
        finally:
            seg.close()
    return outcome


@contextlib.contextmanager
def _opened(key: int, root: str, trust_uids: frozenset[int]) -> Iterator[tuple[int, int]]:
    """The segment directory and its metadata file, opened and verified, the lock held."""
    root_fd = sd.open_root(root, trust_uids)
    try:
        try:
            dir_fd = open_dir(str(key), root_fd)
        except FileNotFoundError:
            raise SegmentNotFound(f"no segment with key {key} under {root}", key=key) from None
        try:
            verify_owner(os.fstat(dir_fd), trust_uids, f"segment {key} directory")
            try:
                meta_fd = os.open(sd.META_NAME, sd.OPEN_RW, dir_fd=dir_fd)
            except FileNotFoundError:
                raise SegmentNotFound(f"segment {key} has no metadata file", key=key) from None
            try:
                verify_owner(os.fstat(meta_fd), trust_uids, f"segment {key} metadata")
                lock = SegmentLock(meta_fd, f"segment {key}")
                lock.acquire(None)
                try:
                    yield dir_fd, meta_fd
                finally:
                    lock.release()
            finally:
                os.close(meta_fd)
        finally:
            os.close(dir_fd)
    finally:
        os.close(root_fd)


def destroy_damaged(key: int, *, root: str | None, trust_uids: frozenset[int]) -> None:
    """Remove segment ``key`` for every process whatever state its files are in: marked
    destroyed where its metadata page allows, unpublished, every file zeroed and unlinked.

    Raises:
        SegmentNotFound: no such segment.
        UnsafeSegment: a symlink or a foreign owner is in the way.
    """
    from shmfs.backends.tmpfs.handle import default_root  # noqa: PLC0415

    root = root or default_root()
    with _opened(key, root, trust_uids) as (dir_fd, meta_fd):
        try:
            if os.fstat(meta_fd).st_size == PAGE:
                with mmap.mmap(meta_fd, PAGE) as mm, memoryview(mm).cast("Q") as meta:
                    meta[L.M_STATE] = meta[L.M_STATE] | L.STATE_DESTROYED
            root_fd = sd.open_root(root, trust_uids)
            try:
                grave = f".dead-{key}-{sd.token()}"
                os.rename(str(key), grave, src_dir_fd=root_fd, dst_dir_fd=root_fd)
                sd.wipe_dir(dir_fd)
                os.rmdir(grave, dir_fd=root_fd)
            finally:
                os.close(root_fd)
        except OSError as exc:
            raise translate(exc, f"cannot remove segment {key}") from exc
