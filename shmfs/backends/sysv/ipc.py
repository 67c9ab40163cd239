"""System V shared memory and semaphores through ctypes: the one place these system calls live.

Why ctypes and not the ``sysv_ipc`` package: sharing a lock with PHP means operating on semaphore
0, 1 and 2 of the 3-semaphore set that PHP's ``sem_get`` creates (docs/sysv-and-php.md §4), and
``sysv_ipc`` only knows sets of one semaphore. With ctypes for the semaphores anyway, five more
libc calls for the shared memory cost less than a compiled dependency, and ``semtimedop`` gives
lock timeouts without polling.

Every function raises ``OSError`` with the C errno; callers translate it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import struct
from collections.abc import Callable
from typing import Final, NamedTuple

__all__ = [
    "IPC_CREAT",
    "IPC_EXCL",
    "IPC_NOWAIT",
    "SEM_UNDO",
    "Attachment",
    "IpcStat",
    "SemOps",
    "quick_semop",
    "sem_remove",
    "sem_stat",
    "semctl_getpid",
    "semctl_getval",
    "semctl_setval",
    "semget",
    "semop",
    "shm_remove",
    "shm_stat",
    "shmget",
]

IPC_CREAT: Final = 0o1000
IPC_EXCL: Final = 0o2000
IPC_NOWAIT: Final = 0o4000
IPC_RMID: Final = 0
IPC_STAT: Final = 2
SEM_UNDO: Final = 0x1000
SHM_RDONLY: Final = 0o10000
GETPID: Final = 11
GETVAL: Final = 12
SETVAL: Final = 16

_libc = ctypes.CDLL(None, use_errno=True)
_libc.shmat.restype = ctypes.c_void_p
_libc.shmat.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
_libc.shmdt.argtypes = (ctypes.c_void_p,)
_libc.semtimedop.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
# The lock's hot path calls semop through a handle without errno capture and without argtypes:
# ctypes' per-call argument conversion and errno swapping cost about 0.35 us per call, a quarter
# of a lock/unlock pair. A failed call is redone through semop() below to learn the errno.
_quick_semop = ctypes.CDLL(None).semop
_quick_semop.restype = ctypes.c_int
# semctl is variadic (its 4th argument is a union semun): no argtypes, each call passes a c_int
# or a pointer explicitly.
_SEMBUF: Final = struct.Struct("HhH")  # unsigned short sem_num; short sem_op; short sem_flg
_STAT_SIZE: Final = 256  # larger than shmid_ds and semid_ds on every 64-bit Linux ABI


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class IpcStat(NamedTuple):
    """The owner and mode of a segment or semaphore set (``struct ipc_perm``), and a segment's
    size and creator pid."""

    uid: int
    cuid: int
    mode: int
    size: int
    cpid: int
    ctime: int = 0
    nattch: int = 0


def _check(result: int) -> int:
    if result == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def shmget(key: int, size: int, flags: int) -> int:
    """``shmget(2)``: the id of segment ``key``."""
    return _check(_libc.shmget(ctypes.c_int(key), ctypes.c_size_t(size), flags))


def _stat(*, semaphores: bool, ident: int) -> bytes:
    raw = ctypes.create_string_buffer(_STAT_SIZE)
    if semaphores:
        _check(_libc.semctl(ident, 0, IPC_STAT, ctypes.cast(raw, ctypes.c_void_p)))
    else:
        _check(_libc.shmctl(ident, IPC_STAT, raw))
    return raw.raw


def shm_stat(shmid: int) -> IpcStat:
    """``IPC_STAT`` of a segment. Offsets are those of the LP64 Linux ABI (x86_64, aarch64):
    ipc_perm uid@4 cuid@12 mode@20 (read as 16 bits, which both ABIs hold it in), segsz@48,
    ctime@72, cpid@80, nattch@88."""
    raw = _stat(semaphores=False, ident=shmid)
    uid, cuid = struct.unpack_from("<I", raw, 4)[0], struct.unpack_from("<I", raw, 12)[0]
    mode = struct.unpack_from("<H", raw, 20)[0]
    size = struct.unpack_from("<Q", raw, 48)[0]
    cpid = struct.unpack_from("<i", raw, 80)[0]
    ctime = struct.unpack_from("<q", raw, 72)[0]
    nattch = struct.unpack_from("<Q", raw, 88)[0]
    return IpcStat(uid, cuid, mode & 0o777, size, cpid, ctime, nattch)


def shm_remove(shmid: int) -> None:
    """``IPC_RMID``: the segment goes when its last attachment does."""
    _check(_libc.shmctl(shmid, IPC_RMID, None))


class Attachment:
    """A segment mapped into this process (``shmat``), as a memoryview over its bytes.

    Detach only once nothing holds a view from :attr:`view`: the memory goes with ``shmdt``.
    """

    def __init__(self, shmid: int, size: int, *, readonly: bool = False) -> None:
        address = _libc.shmat(shmid, None, SHM_RDONLY if readonly else 0)
        if address in (None, ctypes.c_void_p(-1).value):
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        self._address: int | None = address
        self.size = size
        array = (ctypes.c_char * size).from_address(address)
        self.view = memoryview(array).cast("B")

    def detach(self) -> None:
        """``shmdt``; idempotent."""
        if self._address is None:
            return
        address, self._address = self._address, None
        self.view.release()
        _check(_libc.shmdt(ctypes.c_void_p(address)))


def semget(key: int, nsems: int, flags: int) -> int:
    """``semget(2)``: the id of semaphore set ``key``."""
    return _check(_libc.semget(ctypes.c_int(key), nsems, flags))


class SemOps:
    """``(sem_num, sem_op, sem_flg)`` operations packed once as a ``struct sembuf`` array, so
    the lock's hot path does not rebuild them on every call."""

    __slots__ = ("array", "count")

    def __init__(self, ops: list[tuple[int, int, int]]) -> None:
        packed = b"".join(_SEMBUF.pack(num, op, flags) for num, op, flags in ops)
        self.array = ctypes.create_string_buffer(packed, len(packed))
        self.count = len(ops)


def quick_semop(semid: int, ops: SemOps) -> Callable[[], int]:
    """A call that applies ``ops`` to ``semid`` once: 0 if it did, -1 if it failed.

    The fast path of a lock: no timeout, no EINTR retry and no errno. A failed ``semop``
    changes nothing, so a caller that gets -1 redoes the operation through :func:`semop` to wait,
    or to learn the error.
    """
    return functools.partial(
        _quick_semop, ctypes.c_int(semid), ops.array, ctypes.c_size_t(ops.count)
    )


def semop(
    semid: int, ops: list[tuple[int, int, int]] | SemOps, timeout: float | None = None
) -> None:
    """``semtimedop(2)``: apply ``(sem_num, sem_op, sem_flg)`` operations atomically.

    Raises:
        OSError: EAGAIN when ``timeout`` passed (or ``IPC_NOWAIT`` would block), EIDRM when
            the set was removed; EINTR is retried with the time left.
    """
    packed = ops if isinstance(ops, SemOps) else SemOps(ops)
    array, count = packed.array, packed.count
    spec = None
    if timeout is not None:
        whole = int(max(timeout, 0.0))
        spec = _Timespec(whole, int((max(timeout, 0.0) - whole) * 1e9))
    while True:
        result = _libc.semtimedop(
            semid, array, count, ctypes.byref(spec) if spec is not None else None
        )
        if result == 0:
            return
        code = ctypes.get_errno()
        if code != 4:  # EINTR: a signal handler ran; wait again (PHP's sem_acquire does too)
            raise OSError(code, os.strerror(code))


def semctl_getval(semid: int, num: int) -> int:
    """``GETVAL``."""
    return _check(_libc.semctl(semid, num, GETVAL, ctypes.c_int(0)))


def semctl_getpid(semid: int, num: int) -> int:
    """``GETPID``: the pid of the last process that operated on semaphore ``num``."""
    return _check(_libc.semctl(semid, num, GETPID, ctypes.c_int(0)))


def semctl_setval(semid: int, num: int, value: int) -> None:
    """``SETVAL``."""
    _check(_libc.semctl(semid, num, SETVAL, ctypes.c_int(value)))


def sem_stat(semid: int) -> IpcStat:
    """``IPC_STAT`` of a semaphore set (owner and mode only; size and cpid are 0)."""
    raw = _stat(semaphores=True, ident=semid)
    uid, cuid = struct.unpack_from("<I", raw, 4)[0], struct.unpack_from("<I", raw, 12)[0]
    return IpcStat(uid, cuid, struct.unpack_from("<H", raw, 20)[0] & 0o777, 0, 0)


def sem_remove(semid: int) -> None:
    """``IPC_RMID`` of a semaphore set."""
    _check(_libc.semctl(semid, 0, IPC_RMID, ctypes.c_int(0)))
