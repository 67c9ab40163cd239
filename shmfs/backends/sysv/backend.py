"""The sysv backend: one System V segment per key, laid out exactly as PHP's ``ext/sysvshm``.

A PHP process and a Python process can share the segment: values stored with the ``php`` codec
(and no ``secret``) are bare PHP ``serialize()`` bytes, readable by ``shm_get_var``; values of
other codecs carry the shmfs frame, whose first byte no PHP value starts with. The layout is in
``layout.py``; the undo journal that makes changes survive a SIGKILLed writer, in
``journal.py``; the system calls, in ``ipc.py``.

**Locking with PHP.** PHP's sysvshm takes no lock; PHP code guards a segment with
``sem_get($key)``/``sem_acquire``. This backend takes the same 3-semaphore set (key: the segment's
key unless ``sem_key=`` says otherwise) with PHP's registration protocol (docs/php-sysvshm.md §4),
and ``SEM_UNDO`` on every operation, so the kernel releases the lock of a process that dies.

**Reads take the lock**: PHP writers move chunks with ``memmove``, so no lock-free read is safe.
A lookup does not walk PHP's chunk chain each time: ``chain_index.py`` remembers every chunk's
offset and proves it still right (one ``memcmp`` against a copy of the bytes before it) first.

**Size.** ``size`` is PHP's: the header's ``total``, 40 bytes of which are the header. When
shmfs creates the segment it asks the kernel for twice that plus a little, and keeps the journal
past ``total``; PHP never looks there. An existing segment keeps the size its header declares.

**Waiting** polls: writes to a System V segment raise no event anyone can wait on. A waiter
checks every 5 ms (about 200 cheap wake-ups a second, well under 1% of a core), so a change is
seen within 5 ms.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from typing import Any, Final, Self

from shmfs.backends import SegmentInfo, refuse_options
from shmfs.backends.sysv import ipc, layout
from shmfs.backends.sysv.chain_index import ChainIndex
from shmfs.backends.sysv.journal import OVERHEAD, Journal
from shmfs.errors import (
    BackendUnavailable,
    CorruptSegment,
    LockTimeout,
    SegmentFull,
    SegmentNotFound,
    ShmfsError,
    UnsafeSegment,
)
from shmfs.forking import fork_epoch
from shmfs.frame import Pieces
from shmfs.locking import HoldsSegmentLock, ReentrantLock
from shmfs.validate import check_key

__all__ = ["SysvBackend", "ipc_namespace"]

_SEM_USE, _SEM_USERS, _SEM_GATE = 0, 1, 2  # PHP's SYSVSEM_SEM, SYSVSEM_USAGE, SYSVSEM_SETVAL
_TAKE: Final = ipc.SemOps([(_SEM_USE, -1, ipc.SEM_UNDO)])
_TRY_TAKE: Final = ipc.SemOps([(_SEM_USE, -1, ipc.SEM_UNDO | ipc.IPC_NOWAIT)])
_GIVE: Final = ipc.SemOps([(_SEM_USE, 1, ipc.SEM_UNDO)])
_END: Final = 2  # the header's ``end``, in layout.word_view's words
_POLL: Final = 0.005
_OPEN_ATTEMPTS: Final = 100


def _create(key: int, size: int, perm: int) -> int:
    """Create segment ``key``: ``size`` for PHP's layout plus room for the journal, or just
    ``size`` when ``kernel.shmmax`` allows no more (no journal then, as in a PHP-made one)."""
    with_journal = size + ((-size) % 8) + OVERHEAD + size
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


def ipc_namespace() -> str:
    """This process's IPC namespace, for messages about segments another namespace holds."""
    try:
        return os.readlink("/proc/self/ns/ipc")
    except OSError:
        return "unknown"


def _translate(exc: OSError, what: str, key: int) -> ShmfsError:  # noqa: PLR0911  # a table of errno families
    if isinstance(exc, ShmfsError):
        return exc  # already ours (UnsafeSegment, LockTimeout are OSErrors too)
    code = exc.errno
    if code == errno.EINVAL:
        return SegmentFull(
            f"{what}: the kernel refused the size (over kernel.shmmax, or smaller than an "
            f"existing segment's) ({exc.strerror})",
            key=key,
            errno=code,
        )
    if code in (errno.ENOSPC, errno.ENOMEM):
        return SegmentFull(
            f"{what}: System V limits reached ({exc.strerror}): raise kernel.shmmni/shmall, "
            "or remove unused segments (shmfs ls --backend sysv; ipcs -m)",
            key=key,
            errno=code,
        )
    if code in (errno.EACCES, errno.EPERM):
        return UnsafeSegment(f"{what}: {exc.strerror}", key=key, errno=code)
    if code in (errno.EIDRM, errno.ENOENT):
        return SegmentNotFound(
            f"{what}: segment {key} was removed, or lives in another IPC namespace than ours "
            f"({ipc_namespace()})",
            key=key,
            errno=code,
        )
    if code == errno.ENOSYS:
        return BackendUnavailable(f"{what}: System V IPC is not available here", errno=code)
    return ShmfsError(f"{what}: {exc.strerror}", key=key, errno=code)


def _verify(stat: ipc.IpcStat, trust_uids: frozenset[int], what: str) -> None:
    for uid in (stat.uid, stat.cuid):
        if uid not in trust_uids:
            raise UnsafeSegment(
                f"{what} belongs to uid {uid}, which is not trusted "
                f"(trusted: {sorted(trust_uids)}); refusing it (pass trust_uids= to allow)",
                owner=uid,
            )


class _PhpSemaphore:
    """PHP's sysvsem set for one key: registration, acquire and release (docs/php-sysvshm.md §4)."""

    def __init__(self, key: int, perm: int, trust_uids: frozenset[int]) -> None:
        self.key = key
        self.created = False
        self.semid = self._open(key, perm, trust_uids)
        self._try_take = ipc.quick_semop(self.semid, _TRY_TAKE)
        self._quick_give = ipc.quick_semop(self.semid, _GIVE)
        self.register()

    def _open(self, key: int, perm: int, trust_uids: frozenset[int]) -> int:
        for _ in range(_OPEN_ATTEMPTS):
            try:
                semid = ipc.semget(key, 3, 0)
            except FileNotFoundError:
                try:
                    semid = ipc.semget(key, 3, perm | ipc.IPC_CREAT | ipc.IPC_EXCL)
                except FileExistsError:
                    continue  # created meanwhile by someone else: open theirs
                self.created = True
                return semid
            _verify(ipc.sem_stat(semid), trust_uids, f"semaphore set {key:#x}")
            return semid
        raise ShmfsError(f"semaphore set {key:#x}: could not open it")

    def abandon(self) -> None:
        """Unregister after a failed attach; remove the set if we made it and nobody uses it."""
        with contextlib.suppress(OSError):
            if self.unregister() == 0 and self.created:
                ipc.sem_remove(self.semid)

    def register(self) -> None:
        """PHP's ``sem_get``: count ourselves a user; the first user sets the lock's value."""
        undo = ipc.SEM_UNDO
        ipc.semop(self.semid, [(_SEM_GATE, 0, 0), (_SEM_GATE, 1, undo), (_SEM_USERS, 1, undo)])
        try:
            if ipc.semctl_getval(self.semid, _SEM_USERS) == 1:
                ipc.semctl_setval(self.semid, _SEM_USE, 1)
        finally:
            ipc.semop(self.semid, [(_SEM_GATE, -1, undo)])

    def take(self, timeout: float | None) -> None:
        """``sem_acquire``, with a timeout PHP does not have."""
        if not self._try_take():
            return  # free: the common case, one system call
        try:
            ipc.semop(self.semid, _TAKE, timeout)
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                raise _translate(exc, "cannot take the segment lock", self.key) from exc
            pid = None
            with contextlib.suppress(OSError):
                pid = ipc.semctl_getpid(self.semid, _SEM_USE) or None
            raise LockTimeout(
                f"segment {self.key}: lock not acquired within {timeout} s "
                f"({f'held by pid {pid}' if pid else 'held by another process'})",
                holder_pid=pid,
                timeout=timeout,
            ) from None

    def give(self) -> None:
        """``sem_release``."""
        if self._quick_give():
            ipc.semop(self.semid, _GIVE)  # it changed nothing: again, to raise the errno

    def unregister(self) -> int:
        """Stop counting ourselves a user; return how many users remain."""
        ipc.semop(self.semid, [(_SEM_USERS, -1, ipc.SEM_UNDO)])
        return ipc.semctl_getval(self.semid, _SEM_USERS)


class SysvBackend(HoldsSegmentLock):
    """A segment in one System V shared memory segment, shared with PHP."""

    name = "sysv"
    native_codec = "php"
    lock_free_reads = False
    trust_option = "trust_uids="

    # Class-level defaults so close() works on an instance whose __init__ failed part way.
    _attachment: ipc.Attachment | None = None
    _semaphore: _PhpSemaphore | None = None
    _journal: Journal | None = None
    _chain: ChainIndex | None = None
    _lock: ReentrantLock | None = None
    _destroyed = False

    def __init__(
        self,
        key: int,
        shmid: int,
        trust_uids: frozenset[int],
        *,
        created: int,
        semaphore: _PhpSemaphore,
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
        semaphore: _PhpSemaphore,
        lock: ReentrantLock,
    ) -> None:
        self.key = key
        self.shmid = shmid
        self._trust_uids = trust_uids
        self._epoch = fork_epoch()
        stat = ipc.shm_stat(shmid)
        _verify(stat, trust_uids, f"System V segment {key:#x}")
        self.perm = stat.mode
        self.owner = stat.uid
        self._trusted = not stat.mode & 0o022
        self._attachment = ipc.Attachment(shmid, stat.size)
        self._buf = self._attachment.view
        self._chain = ChainIndex(self._buf)
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
            self._journal = Journal.find(self._buf, self.size)

    def _prepare(self, created: int) -> None:
        """Initialise a new or foreign segment and lay out its journal. Lock held."""
        buf = self._buf
        if created:
            layout.initialise(buf[:created])
            self._journal = Journal.format(buf, created)
        elif not layout.is_initialised(buf):
            layout.initialise(buf)  # a foreign segment: PHP would do the same
        self.size = layout.read_header(buf).total
        if self._journal is None:
            self._journal = Journal.find(buf, self.size)

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
            semaphore = _PhpSemaphore(sem_key or key, sem_perm, trust_uids)
        except OSError as exc:
            raise _translate(exc, f"cannot open the semaphore set of segment {key}", key) from exc
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
        semaphore: _PhpSemaphore,
        lock: ReentrantLock,
    ) -> Self | None:
        """One try at attaching, creating under the lock if absent; ``None``: try again."""
        try:
            shmid, created = ipc.shmget(key, 0, 0), 0
        except FileNotFoundError:
            shmid, created = -1, size
        except OSError as exc:
            raise _translate(exc, f"cannot open segment {key}", key) from exc
        if created:
            lock.acquire(None)
        try:
            if created:
                try:
                    shmid = _create(key, size, perm)
                except FileExistsError:
                    return None  # made by someone else meanwhile: open theirs
                except OSError as exc:
                    raise _translate(exc, f"cannot create segment {key}", key) from exc
            return cls(key, shmid, trust_uids, created=created, semaphore=semaphore, lock=lock)
        except ShmfsError:
            raise  # UnsafeSegment and LockTimeout are OSErrors too: not ours to retranslate
        except OSError as exc:
            if exc.errno in (errno.EIDRM, errno.EINVAL):
                return None  # removed between shmget and shmat: attach makes a fresh one
            raise _translate(exc, f"cannot attach segment {key}", key) from exc
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
        if self._journal is not None:
            self._journal.recover()  # a word read, unless a writer died mid-change

    # ------------------------------------------------------------------- variables

    def _find(self, index: int) -> tuple[ChainIndex, tuple[int, int, int] | None]:
        """The chain index, and (offset, length, next) of ``index``'s chunk or ``None``."""
        chain = self._chain
        if chain is None:
            raise SegmentNotFound(f"segment {self.key} was destroyed", key=self.key)
        try:
            return chain, chain.find(index)
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

    def trusted(self, index: int) -> bool:
        """Whether only trusted users can write the segment (owner trusted, no 0o022 bits)."""
        del index
        return self._trusted

    def write(self, index: int, data: bytes | Pieces) -> None:
        """Store ``data``: PHP's remove-then-append, journalled. Lock held."""
        data = bytes(data)  # always bytes already: this class does not set writes_pieces
        self._check_writable()
        chain, found = self._find(index)
        pos, old = (found[0], found[2]) if found is not None else (-1, 0)
        # The header is checked: by the walk, or as bytes equal to those of a checked one.
        words = chain.words
        journal = self._journal
        if journal is not None:
            end = words[_END]
            journal.begin(pos if pos >= 0 else end, end)
        try:
            at = layout.store(self._buf, words, index, data, pos=pos, old=old, scrub=True)
        except SegmentFull as exc:
            raise SegmentFull(
                f"segment {self.key}: {exc} with a bigger size= (PHP's size counts a 40-byte "
                "header and 24-39 bytes per variable besides the values)",
                key=self.key,
                index=index,
                needed=layout.chunk_size(len(data)),  # what PHP's layout counts against size
            ) from exc
        finally:
            if journal is not None:
                journal.commit()
        length = len(data)
        chain.stored(index, pos=pos, old=old, at=at, length=length, step=layout.chunk_size(length))

    def delete(self, index: int) -> bool:
        """Remove ``index`` and zero the bytes it frees. Lock held."""
        self._check_writable()
        chain, found = self._find(index)
        if found is None:
            return False
        pos, _, step = found
        words = chain.words
        journal = self._journal
        if journal is not None:
            journal.begin(pos, words[_END])
        try:
            layout.cut(self._buf, words, pos, step, scrub=True)
        finally:
            if journal is not None:
                journal.commit()
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
        if self._chain is not None:
            self._chain.release()
            self._chain = None
        if self._journal is not None:
            self._journal.release()
            self._journal = None
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
            raise _translate(exc, f"cannot remove segment {self.key}", self.key) from exc
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
        found = []
        try:
            with open("/proc/sysvipc/shm", encoding="ascii") as table:
                rows = [line.split() for line in table.readlines()[1:]]
        except OSError:
            return []
        for row in rows:
            # proc(5): every column is decimal but perms, which is octal ("666" is 0o666).
            info = _peek(
                *(
                    int(row[column], 8 if column == 2 else 10)
                    for column in (0, 1, 2, 3, 4, 7, 13, 6)
                )
            )
            if info is not None:
                found.append(info)
        return sorted(found, key=lambda info: info.key)


def _peek(*row: int) -> SegmentInfo | None:
    """A PHP-layout segment's report from its /proc/sysvipc/shm row (key, shmid, perms, size,
    cpid, uid, ctime, nattch), read through a read-only attachment; ``None`` if it is not one we
    can read."""
    key, shmid, perms, size, cpid, uid, ctime, nattch = row
    if key == 0 or size < layout.HEADER_SIZE:
        return None
    try:
        attachment = ipc.Attachment(shmid, size, readonly=True)
    except OSError:
        return None
    try:
        if not layout.is_initialised(attachment.view):
            return None
        stats = layout.stats(attachment.view)
    except CorruptSegment:
        return None
    finally:
        attachment.detach()
    signed = key - (1 << 32) if key >= 1 << 31 else key
    return SegmentInfo(
        key=signed,
        backend="sysv",
        size=stats.total,
        used=stats.used + layout.HEADER_SIZE,
        variables=stats.variables,
        perm=perms & 0o777,
        owner=uid,
        location=f"shmid {shmid} in {ipc_namespace()}",
        created=float(ctime),
        creator_pid=cpid,
        attached=nattch,
    )


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
