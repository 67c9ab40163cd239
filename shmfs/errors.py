"""The exceptions shmfs raises.

Every error derives from :class:`ShmfsError` and, where one fits, from the builtin a caller
would already catch, so ``except KeyError`` around ``seg[i]`` keeps working::

    ShmfsError (Exception)
    ├── InvalidArgument (ValueError)        a bad argument: size, perm, codec name...
    │   └── InvalidKey                      bad segment key or variable index
    │       └── InvalidKeyType (TypeError)  ...of the wrong type
    ├── VariableNotFound (KeyError)         get/remove of an absent index
    ├── SegmentNotFound (LookupError)       destroyed, or in another IPC namespace
    ├── SegmentFull (MemoryError)           over the segment's size, or the filesystem is full
    ├── SerializationError (ValueError)     the codec cannot encode or decode the value
    ├── CorruptSegment                      stored bytes fail their checks
    ├── UnsafeSegment (PermissionError)     symlink, foreign owner, untrusted writer, bad signature
    ├── LockTimeout (TimeoutError)          the segment lock was not had in time
    ├── SegmentDetached (ValueError)        use of a handle after detach()
    ├── WaitTimeout (TimeoutError)          wait() saw no new value in time
    └── BackendUnavailable                  no /dev/shm, SysV IPC disabled, Redis unreachable

Context travels as attributes (``key``, ``index``, ...) rather than only in the message, and
every error pickles, so it survives the trip back from a worker process.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackendUnavailable",
    "CorruptSegment",
    "InvalidArgument",
    "InvalidKey",
    "InvalidKeyType",
    "LockTimeout",
    "SegmentDetached",
    "SegmentFull",
    "SegmentNotFound",
    "SerializationError",
    "ShmfsError",
    "UnsafeSegment",
    "VariableNotFound",
    "WaitTimeout",
]


class ShmfsError(Exception):
    """Base of every error shmfs raises.

    Args:
        message: One line saying what went wrong and, where it helps, how to fix it.
        **context: Facts about the failure kept as attributes, such as ``key=`` or ``index=``.
    """

    def __init__(self, message: str, **context: Any) -> None:
        # Only the message goes to args: BaseException.__reduce__ rebuilds the error from
        # args and restores __dict__, so the context attributes pickle without extra code.
        super().__init__(message)
        self.message = message
        self.__dict__.update(context)

    def __str__(self) -> str:
        # KeyError's own __str__ shows repr(arg); ours is a sentence, so print it as one.
        return self.message


class InvalidArgument(ShmfsError, ValueError):
    """An argument is invalid (a size, a perm, a codec name); nothing was touched."""


class InvalidKey(InvalidArgument):
    """A segment key or variable index is out of range; nothing was touched."""


class InvalidKeyType(InvalidKey, TypeError):
    """A segment key or variable index is not an ``int``; nothing was touched."""


class VariableNotFound(ShmfsError, KeyError):
    """The segment holds no variable at this index (PHP: "Variable key N doesn't exist")."""


class SegmentNotFound(ShmfsError, LookupError):
    """The segment does not exist: it was destroyed, or lives in another IPC namespace."""


class SegmentFull(ShmfsError, MemoryError):
    """The value does not fit: in the segment's ``size``, or on the filesystem (ENOSPC).

    Attributes:
        needed: The bytes the value needs where the backend says (``None`` where it cannot),
            so that a caller such as ``Cache`` need not encode the value again to learn it.
    """

    needed: int | None = None


class SerializationError(ShmfsError, ValueError):
    """The codec cannot encode the value, or cannot decode the stored bytes."""


class CorruptSegment(ShmfsError):
    """Stored bytes fail their checks: magic, version, length, checksum or PHP header."""


class UnsafeSegment(ShmfsError, PermissionError):
    """Refused for safety: a symlink, a foreign owner, an untrusted writer or a bad signature."""


class LockTimeout(ShmfsError, TimeoutError):
    """The segment lock was not acquired in time; ``holder_pid`` names the holder if known."""


class SegmentDetached(ShmfsError, ValueError):
    """The handle was detached; attach again to use the segment."""


class WaitTimeout(ShmfsError, TimeoutError):
    """``wait()`` saw no new value before its timeout."""


class BackendUnavailable(ShmfsError):
    """The backend cannot be reached: no /dev/shm, SysV IPC disabled, Redis unreachable.

    Attributes:
        committed: ``False``: the call changed nothing, and may be retried. ``None``: the
            outcome is unknown, since the connection to a Redis server was lost after the
            change was sent (it may or may not have been made; read back before retrying a
            change that must not happen twice, such as ``incr``).
    """

    committed: bool | None = False
