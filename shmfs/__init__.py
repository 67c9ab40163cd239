"""shmfs: a cross-process key-value store in shared memory.

PHP's ``shm_attach`` model for Python: a segment, named by an integer key, holds variables indexed
by integers, shared by every process that attaches it::

    import shmfs

    with shmfs.attach(987654) as seg:
        seg[1] = "Hello.  This is the shared memory segment."
        print(seg[1])
"""

from __future__ import annotations

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
from shmfs.segment import Segment, attach, segments

__all__ = [
    "BackendUnavailable",
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
    "segments",
]

__version__ = "0.1.0"
