"""The sysv backend: one System V segment per key, laid out exactly as PHP's ``ext/sysvshm``.

A PHP process and a Python process can share the segment: values stored with the ``php`` codec
(and no ``secret``) are bare PHP ``serialize()`` bytes, readable by ``shm_get_var``; values of
other codecs carry the shmfs frame, whose first byte no PHP value starts with. The layout is in
``layout.py``; the journal that makes changes survive a SIGKILLed writer, in ``journal.py``;
PHP's semaphore, in ``semaphore.py``; the system calls, in ``ipc.py``.

**Locking with PHP.** PHP's sysvshm takes no lock; PHP code guards a segment with
``sem_get($key)``/``sem_acquire``. This backend takes the same 3-semaphore set (key: the segment's
key unless ``sem_key=`` says otherwise) with PHP's registration protocol (docs/sysv-and-php.md §4),
and ``SEM_UNDO`` on every operation, so the kernel releases the lock of a process that dies.

**Reads take the lock**: PHP writers move chunks with ``memmove``, so no lock-free read is safe.
A lookup does not walk PHP's chunk chain each time: ``chain_index.py`` remembers every chunk's
offset and proves it still right first (by the stamp in the chunk's last padding word).

**Size.** ``size`` is PHP's: the header's ``total``, 40 bytes of which are the header. When
shmfs creates the segment it asks the kernel for 4 KiB more (journal.OVERHEAD), and keeps the
journal past ``total``; PHP never looks there. An existing segment keeps the size its header
declares.

**Waiting** polls: writes to a System V segment raise no event anyone can wait on. A waiter
checks every 5 ms (about 200 cheap wake-ups a second, well under 1% of a core), so a change is
seen within 5 ms.

Its length (over 400 lines): ``SysvBackend`` is every call of the Backend Protocol on one PHP
segment, each short and handing the work to ``layout``, ``journal``, ``chain_index`` and
``semaphore``; what it keeps together is the lock discipline around those calls, which a split
class would scatter.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from typing import Any, Final, Self

from shmfs import codecs, hotpath
from shmfs.backends import Hot, SegmentInfo, refuse_options
from shmfs.backends.sysv import ipc, layout, listing
from shmfs.backends.sysv.chain_index import ChainIndex
from shmfs.backends.sysv.check import check_segment, destroy_damaged, placed
from shmfs.backends.sysv.journal import OVERHEAD, Journal, Unjournalled
from shmfs.backends.sysv.semaphore import PhpSemaphore
from shmfs.backends.sysv.translate import ipc_namespace, squatted, translate, verify
from shmfs.errors import CorruptSegment, SegmentFull, SegmentNotFound, ShmfsError
from shmfs.forking import fork_epoch
from shmfs.frame import Pieces
from shmfs.locking import HoldsSegmentLock, ReentrantLock
from shmfs.validate import check_key

__all__ = ["SysvBackend"]

_FREE: Final = 3  # the header's ``free``, in layout.word_view's words
_POLL: Final = 0.005
_OPEN_ATTEMPTS: Final = 100


def _create(key: int, size: int, perm: int) -> int:
    """Create segment ``key``: ``size`` for PHP's layout plus room for the journal, or just
    ``size`` when ``kernel.shmmax`` allows no more (no journal then, as in a PHP-made one)."""
    with_journal = size + OVERHEAD
    try:
        return ipc.shmget(key, with_journal, perm | ipc.IPC_CREAT | ipc.IPC_EXCL)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    return ipc.shmget(key, size, perm | ipc.IPC_CREAT | ipc.IPC_EXCL)


def _declared_total(buf: memoryview, key: int) -> int:
    """The ``total`` an initialised PHP header declares, checked against the kernel's size."""
    with buf[: layout.HEADER_SIZE].cast("q") as words:
        total = words[4]
    if not layout.HEADER_SIZE <= total <= len(buf):
        raise CorruptSegment(
            f"segment {key}: header declares {total} bytes in a {len(buf)}-byte segment", key=key
        )
    return int(total)


class SysvBackend(HoldsSegmentLock):
    """A segment in one System V shared memory segment, shared with PHP."""

    name = "sysv"
    native_codec = "php"
    lock_free_reads = False
    trust_option = "trust_uids="
    # shmfs.check and shmfs.destroy: they work on the bytes, not through a handle.
    check_segment = staticmethod(check_segment)
    destroy_damaged = staticmethod(destroy_damaged)

    # Class-level defaults so close() works on an instance whose __init__ failed part way.
    _attachment: ipc.Attachment | None = None
    _semaphore: PhpSemaphore | None = None
    _journal: Unjournalled | None = None
    _chain: ChainIndex | None = None
    _words: memoryview | None = None
    #: The C fast path of the common get and put (shmfs/_hot_c/sysv.c), or None.
    hot: Hot | None = None
    _lock: ReentrantLock | None = None
    _destroyed = False

    def __init__(
        self,
        key: int,
        shmid: int,
        trust_uids: frozenset[int],
        *,
        created: int,
        semaphore: PhpSemaphore,
        lock: ReentrantLock,
    ) -> None:
        try:
            self._setup(key, shmid, trust_uids, created=created, semaphore=semaphore, lock=lock)
        except BaseException:
            self._semaphore = None  # the caller abandons it
            self._close_now()
            raise

    def _setup(
        self,
        key: int,
        shmid: int,
        trust_uids: frozenset[int],
        *,
        created: int,
        semaphore: PhpSemaphore,
        lock: ReentrantLock,
    ) -> None:
        self.key = key
        self.shmid = shmid
        self._trust_uids = trust_uids
        self._epoch = fork_epoch()
        stat = ipc.shm_stat(shmid)
        verify(stat, trust_uids, f"System V segment {key:#x}")
        self.perm = stat.mode
        self.owner = stat.uid
        self._trusted = not stat.mode & 0o022
        self._attachment = ipc.Attachment(shmid, stat.size)
        self._buf = self._attachment.view
        self._words = layout.word_view(self._buf)
        self._semaphore = semaphore
        self._lock = lock
        if created or not layout.is_initialised(self._buf):
            # The creator holds the lock from before the segment exists until it is laid out,
            # so nobody else can take a half-made segment for a foreign one and lay it out too.
            self._lock.acquire(None)
            try:
                self._prepare(created)
            finally:
                self._lock.release()
        else:
            # ``total`` never changes once written, so no lock is needed to read it, and a
            # holder busy for a long time does not hold up attaching (its lock_timeout
            # applies to the first operation instead). A dead writer's journal is undone by
            # the next acquire().
            self.size = _declared_total(self._buf, key)
            self._use_journal(Journal.find(self._buf, self._words, self.size))

    def _prepare(self, created: int) -> None:
        """Initialise a new or foreign segment and lay out its journal. Lock held."""
        buf, words = self._buf, self._words
        assert words is not None
        journal = None
        if created:
            layout.initialise(buf[:created])
            journal = Journal.format(buf, words, created)
        elif not layout.is_initialised(buf):
            layout.initialise(buf)  # a foreign segment: PHP would do the same
        self.size = layout.read_header(buf).total
        self._use_journal(journal or Journal.find(buf, words, self.size))

    def _use_journal(self, journal: Journal | None) -> None:
        """Make the changes through ``journal``, or as PHP makes them without one; the chain
        index's stamps take the journal's seed (shared), or this handle's own."""
        assert self._words is not None
        changes = journal or Unjournalled(
            self._buf, self._words, int.from_bytes(os.urandom(8), "little", signed=True)
        )
        self._journal = changes
        self._chain = chain = ChainIndex(self._buf, self._words, changes.seed)
        assert self._semaphore is not None and self._lock is not None
        self.hot = hotpath.new_sysv_hot(
            self._buf,
            semid=self._semaphore.semid,
            journal=changes.offset,
            seed=changes.seed,
            trusted=self._trusted,
            state=chain.hot_state(),
            stored=chain.stored,
            native=codecs.get_codec(self.native_codec).decode,
        )
        if self.hot is not None:
            self.hot.reset(self._lock.interface, 0, 0)

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
        """Attach System V segment ``key``, creating it (with room for the journal) if absent.

        The one option, ``sem_key``, names the semaphore set that PHP code guards the segment
        with (``sem_get($sem_key)``); it defaults to the segment's key.
        """
        del root  # System V keys name segments machine-wide (per IPC namespace): no root
        sem_key = options.pop("sem_key", None)
        refuse_options(cls.name, options)
        if sem_key is not None:
            sem_key = check_key(sem_key)
        if size < layout.HEADER_SIZE + 32:
            raise SegmentFull(
                f"segment {key}: size {size} is too small for PHP's layout (minimum 72)", key=key
            )
        sem_perm = perm  # an existing segment's users need its mode on the lock too
        with contextlib.suppress(OSError):
            sem_perm = ipc.shm_stat(ipc.shmget(key, 0, 0)).mode
        try:
            semaphore = PhpSemaphore(sem_key or key, sem_perm, trust_uids)
        except OSError as exc:
            what = f"cannot open the semaphore set of segment {key}"
            raise squatted(exc, "sem", sem_key or key, what) from exc
        lock = ReentrantLock(f"segment {key}", semaphore.take, semaphore.give)
        try:
            for _ in range(_OPEN_ATTEMPTS):
                backend = cls._attempt(key, size, perm, trust_uids, semaphore=semaphore, lock=lock)
                if backend is not None:
                    return backend
        except BaseException:
            semaphore.abandon()
            raise
        semaphore.abandon()
        raise ShmfsError(f"segment {key}: could not attach it after {_OPEN_ATTEMPTS} tries")

    @classmethod
    def _attempt(
        cls,
        key: int,
        size: int,
        perm: int,
        trust_uids: frozenset[int],
        *,
        semaphore: PhpSemaphore,
        lock: ReentrantLock,
    ) -> Self | None:
        """One try at attaching, creating under the lock if absent; ``None``: try again."""
        try:
            shmid, created = ipc.shmget(key, 0, 0), 0
        except FileNotFoundError:
            shmid, created = -1, size
        except OSError as exc:
            raise squatted(exc, "shm", key, f"cannot open segment {key}") from exc
        if created:
            lock.acquire(None)
        try:
            if created:
                try:
                    shmid = _create(key, size, perm)
                except FileExistsError:
                    return None  # made by someone else meanwhile: open theirs
                except OSError as exc:
                    raise translate(exc, f"cannot create segment {key}", key) from exc
            return cls(key, shmid, trust_uids, created=created, semaphore=semaphore, lock=lock)
        except ShmfsError:
            raise  # UnsafeSegment and LockTimeout are OSErrors too: not ours to retranslate
        except OSError as exc:
            if exc.errno in (errno.EIDRM, errno.EINVAL):
                return None  # removed between shmget and shmat: attach makes a fresh one
            raise squatted(exc, "shm", key, f"cannot attach segment {key}") from exc
        finally:
            if created:
                lock.release()

    def _check(self) -> memoryview:
        """The segment's bytes; reregisters after fork; refuses a destroyed segment."""
        if self._attachment is None:
            raise SegmentNotFound(f"segment {self.key} was destroyed", key=self.key)
        if self._epoch != fork_epoch():
            # SEM_UNDO adjustments are not inherited: the child counts itself a user afresh,
            # and gets a lock object of its own (a parent thread may hold the old one).
            assert self._semaphore is not None
            self._semaphore.register()
            parent, self._lock = (
                self._lock,
                ReentrantLock(f"segment {self.key}", self._semaphore.take, self._semaphore.give),
            )
            self._lock.inherit(parent)
            if self.hot is not None:
                self.hot.reset(self._lock.interface, 0, 0)
            self._epoch = fork_epoch()
        return self._buf

    def _check_writable(self) -> None:
        """``_check``, for a change made with the lock held: refuse one a forked child would
        make under its parent's lock."""
        self._check()
        assert self._lock is not None
        self._lock.check_writable()

    def _live(self) -> memoryview:
        """Like ``_check``, under the lock: a header zeroed by ``destroy()`` means gone."""
        buf = self._check()
        if not layout.is_initialised(buf):
            raise SegmentNotFound(
                f"segment {self.key} was destroyed (its bytes were wiped)", key=self.key
            )
        return buf

    # --------------------------------------------------------------------- locking

    def acquire(self, timeout: float | None) -> None:
        """Take PHP's semaphore for the segment; undo a dead writer's change."""
        self._check()
        assert self._lock is not None
        self._lock.acquire(timeout)
        if self._journal is not None and self._journal.recover() and self._chain is not None:
            self._chain.forget()  # a dead writer's change, finished or undone

    # ------------------------------------------------------------------- variables

    def _find(
        self, index: int, *, exact: bool = False
    ) -> tuple[ChainIndex, tuple[int, int, int] | None]:
        """The chain index, and (offset, length, next) of ``index``'s chunk or ``None``
        (``exact``: for a write, see ChainIndex.find)."""
        chain = self._chain
        if chain is None:
            raise SegmentNotFound(f"segment {self.key} was destroyed", key=self.key)
        try:
            return chain, chain.find(index, exact=exact)
        except CorruptSegment:
            self._live()  # a header wiped by destroy() means gone, not damaged
            raise

    def read(self, index: int) -> bytes | None:
        """Copy the bytes of ``index`` (lock held by the caller)."""
        found = self._find(index)[1]
        if found is None:
            return None
        data = found[0] + layout.CHUNK_HEADER_SIZE
        return self._buf[data : data + found[1]].tobytes()

    def read_at(self, index: int) -> int | None:
        """The offset of ``index``'s chunk, or ``None`` (lock held by the caller)."""
        found = self._find(index)[1]
        return None if found is None else found[0]

    def where(self, index: int) -> tuple[str | None, int | None]:
        """``(None, offset)`` of ``index``'s chunk, for messages about damage."""
        return placed(self, index)

    def trusted(self, index: int) -> bool:
        """Whether only trusted users can write the segment (owner trusted, no 0o022 bits)."""
        del index
        return self._trusted

    def write(self, index: int, data: bytes | Pieces) -> None:
        """Store ``data``: PHP's remove-then-append, through the journal. Lock held."""
        data = bytes(data)  # always bytes already: this class does not set writes_pieces
        self._check_writable()
        chain, found = self._find(index, exact=True)
        pos, old = (found[0], found[2]) if found is not None else (-1, 0)
        # The header is checked: by the walk, or by the stamp of a chunk within it.
        words, journal = chain.words, self._journal
        assert journal is not None  # set with the chain index
        need = layout.chunk_size(len(data))
        free = words[_FREE]
        if free + old < need:
            raise SegmentFull(
                f"segment {self.key}: not enough shared memory left: a {len(data)}-byte value "
                f"takes a {need}-byte chunk but only {free + old} of the segment's {self.size} "
                "bytes are free; attach a bigger segment with a bigger size= (PHP's size counts "
                "a 40-byte header and 24-39 bytes per variable besides the values)",
                key=self.key,
                index=index,
                needed=need,  # what PHP's layout counts against size
                free=free + old,
                total=self.size,
            )
        if pos >= 0:
            at = journal.replace(index, data, pos=pos, old=old)
        else:
            at = journal.append(index, data, need)
        chain.stored(index, pos=pos, old=old, at=at)

    def delete(self, index: int) -> bool:
        """Remove ``index`` and zero the bytes it frees, through the journal. Lock held."""
        self._check_writable()
        chain, found = self._find(index, exact=True)
        if found is None:
            return False
        pos, _, step = found
        assert self._journal is not None  # set with the chain index
        self._journal.cut(pos, step)
        chain.removed(index, pos=pos, step=step)
        return True

    def indices(self) -> list[int]:
        """Indices holding values, ascending. Takes the lock: a PHP-layout chain walked while
        another process compacts it is a chain in pieces."""
        self.acquire(None)
        try:
            return sorted(layout.indices(self._live()))
        finally:
            self.release()

    def count(self) -> int:
        """Number of variables."""
        self.acquire(None)
        try:
            return len(layout.indices(self._live()))
        finally:
            self.release()

    def version(self, index: int) -> object:
        """The stored bytes themselves: System V segments keep no per-variable counter."""
        self.acquire(None)
        try:
            return self.read(index)
        finally:
            self.release()

    def watcher(self) -> _PollWatcher:
        """A waiter that polls every 5 ms."""
        self._check()
        return _PollWatcher()

    def info(self) -> SegmentInfo:
        """Report on the segment."""
        self.acquire(None)
        try:
            stats = layout.stats(self._live())
        finally:
            self.release()
        stat = ipc.shm_stat(self.shmid)
        return SegmentInfo(
            key=self.key,
            backend=self.name,
            size=stats.total,
            used=stats.used + layout.HEADER_SIZE,
            variables=stats.variables,
            perm=self.perm,
            owner=self.owner,
            location=f"shmid {self.shmid} in {ipc_namespace()}",
            created=float(stat.ctime),
            creator_pid=stat.cpid,
            attached=int(stat.nattch),
        )

    # ------------------------------------------------------------------- lifecycle

    def _close_now(self) -> None:
        """Detach and stop counting ourselves a semaphore user. Idempotent."""
        if self.hot is not None:
            self.hot.close()  # first: it holds an export of the segment's bytes
            self.hot = None
        if self._chain is not None:
            self._chain.release()
            self._chain = None
        if self._journal is not None:
            self._journal.release()
            self._journal = None
        if self._words is not None:
            self._words.release()
            self._words = None
        if self._attachment is not None:
            attachment, self._attachment = self._attachment, None
            with contextlib.suppress(OSError, BufferError):
                attachment.detach()
        if self._semaphore is not None:
            semaphore, self._semaphore = self._semaphore, None
            with contextlib.suppress(OSError):
                if semaphore.unregister() == 0 and self._destroyed:
                    ipc.sem_remove(semaphore.semid)

    def destroy(self) -> None:
        """Wipe the bytes and remove the segment (lock held); ``close()`` then removes the
        semaphore set too, unless another process still uses it."""
        self._check_writable()
        buf = self._live()
        if self._chain is not None:
            self._chain.forget()
        layout.wipe(buf)
        try:
            ipc.shm_remove(self.shmid)
        except OSError as exc:
            raise translate(exc, f"cannot remove segment {self.key}", self.key) from exc
        self._destroyed = True

    @classmethod
    def scope(cls, root: str | None) -> str:
        """The IPC namespace: System V segments exist per namespace."""
        del root
        return (
            f"in IPC namespace {ipc_namespace()} (a segment made in another IPC namespace, such "
            "as another container without a shared --ipc, is not visible here)"
        )

    @classmethod
    def list_segments(cls, root: str | None) -> list[SegmentInfo]:
        """Report every PHP-layout segment in this IPC namespace that we may read."""
        del root
        return listing.list_segments()


class _PollWatcher:
    """Waiting on a System V segment: no events exist, so sleep in short steps."""

    def fileno(self) -> int | None:
        """No descriptor: the asyncio form sleeps too."""
        return None

    def wait(self, timeout: float) -> None:
        """Sleep ``min(timeout, 5 ms)``."""
        time.sleep(min(timeout, _POLL))

    def drain(self) -> None:
        """Nothing to drain."""

    def close(self) -> None:
        """Nothing to release."""
