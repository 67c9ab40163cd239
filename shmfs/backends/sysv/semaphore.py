"""PHP's sysvsem semaphore set for one key: registration, acquire and release
(docs/sysv-and-php.md §4), so Python and PHP writers exclude each other."""

from __future__ import annotations

import contextlib
import errno
from typing import Final

from shmfs.backends.sysv import ipc
from shmfs.backends.sysv.translate import squatted, translate, verify
from shmfs.errors import LockTimeout, ShmfsError

__all__ = ["SEM_USE", "PhpSemaphore"]

SEM_USE, _SEM_USERS, _SEM_GATE = 0, 1, 2  # PHP's SYSVSEM_SEM, SYSVSEM_USAGE, SYSVSEM_SETVAL
_TAKE: Final = ipc.SemOps([(SEM_USE, -1, ipc.SEM_UNDO)])
_TRY_TAKE: Final = ipc.SemOps([(SEM_USE, -1, ipc.SEM_UNDO | ipc.IPC_NOWAIT)])
_GIVE: Final = ipc.SemOps([(SEM_USE, 1, ipc.SEM_UNDO)])
_OPEN_ATTEMPTS: Final = 100


class PhpSemaphore:
    """PHP's sysvsem set for one key: registration, acquire and release
    (docs/sysv-and-php.md §4)."""

    def __init__(self, key: int, perm: int, trust_uids: frozenset[int]) -> None:
        self.key = key
        self.created = False
        self.semid = self._open(key, perm, trust_uids)
        self._try_take = ipc.quick_semop(self.semid, _TRY_TAKE)
        self._quick_give = ipc.quick_semop(self.semid, _GIVE)
        self.register()

    def _open(self, key: int, perm: int, trust_uids: frozenset[int]) -> int:
        for _ in range(_OPEN_ATTEMPTS):
            what = f"cannot open the semaphore set {key:#x} of segment {key}"
            try:
                semid = ipc.semget(key, 3, 0)
            except FileNotFoundError:
                try:
                    semid = ipc.semget(key, 3, perm | ipc.IPC_CREAT | ipc.IPC_EXCL)
                except FileExistsError:
                    continue  # created meanwhile by someone else: open theirs
                self.created = True
                return semid
            except OSError as exc:  # EACCES: another user's; EINVAL: fewer than 3 semaphores
                raise squatted(exc, "sem", key, what) from exc
            try:
                stat = ipc.sem_stat(semid)
            except OSError as exc:
                raise squatted(exc, "sem", key, what) from exc
            verify(stat, trust_uids, f"semaphore set {key:#x}")
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
                ipc.semctl_setval(self.semid, SEM_USE, 1)
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
                raise translate(exc, "cannot take the segment lock", self.key) from exc
            pid = None
            with contextlib.suppress(OSError):
                pid = ipc.semctl_getpid(self.semid, SEM_USE) or None
            raise LockTimeout(
                f"segment {self.key}: lock not acquired within {timeout:.3g} s "
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
