"""shmfs: a cross-process key-value store in shared memory.

PHP's ``shm_attach`` model for Python: a segment, named by an integer key, holds variables indexed
by integers, shared by every process that attaches it::

    import shmfs

    with shmfs.attach(987654) as seg:
        seg[1] = "Hello.  This is the shared memory segment."
        print(seg[1])
"""

from __future__ import annotations

from shmfs import php  # noqa: F401  # so that ``shmfs.php.shm_attach`` works after import shmfs
from shmfs.cache import Cache
from shmfs.check import CheckReport, check
from shmfs.errors import (
    BackendUnavailable,
    CorruptSegment,
    InvalidArgument,
    InvalidKey,
    InvalidKeyType,
    LockTimeout,
    SegmentDetached,
    SegmentFull,
    SegmentNotFound,
    SerializationError,
    ShmfsError,
    UnsafeSegment,
    VariableNotFound,
    WaitTimeout,
)
from shmfs.ftok import ftok
from shmfs.removal import destroy
from shmfs.segment import Segment, attach, segments

__all__ = [
    "BackendUnavailable",
    "Cache",
    "CheckReport",
    "CorruptSegment",
    "InvalidArgument",
    "InvalidKey",
    "InvalidKeyType",
    "LockTimeout",
    "Segment",
    "SegmentDetached",
    "SegmentFull",
    "SegmentNotFound",
    "SerializationError",
    "ShmfsError",
    "UnsafeSegment",
    "VariableNotFound",
    "WaitTimeout",
    "attach",
    "check",
    "destroy",
    "ftok",
    "segments",
]

__version__ = "0.1.0"
