"""Removing a segment by key, even one too damaged to attach (``shmfs.destroy``, ``shmfs rm``).

Apart from :mod:`shmfs.damage`, which ``Segment`` imports: this module imports ``Segment``.
"""

from __future__ import annotations

from collections.abc import Iterable

from shmfs.backends import backend_class, backend_name
from shmfs.errors import CorruptSegment, SegmentNotFound
from shmfs.segment import attach
from shmfs.validate import check_key, trusted_uids

__all__ = ["destroy"]


def destroy(
    key: int,
    *,
    backend: str | None = None,
    root: str | None = None,
    trust_uids: Iterable[int] | None = None,
) -> None:
    """Remove segment ``key`` for every process, wiping its data, even when its metadata is
    too damaged to attach (PHP: ``shm_remove``, by key).

    A segment that attaches is destroyed as :meth:`Segment.destroy` does; one that does not
    (``CorruptSegment``) is removed by its backend's ``destroy_damaged``, under the segment
    lock, without reading what the damage makes unreadable.

    Raises:
        InvalidKey: ``key`` is 0 or out of range.
        SegmentNotFound: no segment ``key`` exists.
        UnsafeSegment: a symlink or a foreign owner is in the way.
        CorruptSegment: the segment is damaged and its backend cannot remove it so.
        BackendUnavailable: the backend cannot be reached.
    """
    key = check_key(key)
    name = backend_name(backend)
    cls = backend_class(name)
    trusted = trusted_uids(trust_uids)
    if not any(info.key == key for info in cls.list_segments(root)):
        raise SegmentNotFound(f"no segment with key {key} {cls.scope(root)}", key=key)
    try:
        seg = attach(key, backend=name, root=root, trust_uids=trusted)
    except CorruptSegment:
        remove = getattr(cls, "destroy_damaged", None)
        if remove is None:
            raise
        remove(key, root=root, trust_uids=trusted)
        return
    seg.destroy()
