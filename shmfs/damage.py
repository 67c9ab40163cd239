"""Damage said precisely: which segment, which variable, which file and offset.

The checks that find damage (a frame's checksum in ``frame.py``, a slot's seal in
``backends/tmpfs/slabs.py``, a PHP chunk in ``backends/sysv/layout.py``) see bytes, not where
they came from. :func:`located` is applied where the error leaves a call on one variable (in
``Segment``): it adds the segment key, the index, and where the backend keeps that variable's
bytes (``Backend.where``, an optional capability), so every ``CorruptSegment`` a user sees names
all of them, as attributes (``key``, ``index``, ``file``, ``offset``) and in its message.

It runs only once an error was raised, so a get that succeeds pays nothing for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from shmfs.errors import CorruptSegment, SegmentNotFound

__all__ = ["destroy", "located", "where"]


def where(backend: Any, index: int) -> tuple[str | None, int | None]:
    """``(file, offset)`` of ``index``'s bytes as ``backend.where`` says, or ``(None, None)``
    where the backend cannot tell (redis), or the damage hides it."""
    find = getattr(backend, "where", None)
    if find is None:
        return None, None
    with contextlib.suppress(Exception):  # the segment is damaged: where may fail too
        found: tuple[str | None, int | None] = find(index)
        return found
    return None, None


def located(exc: CorruptSegment, backend: Any, key: int, index: int | None) -> CorruptSegment:
    """``exc`` with the segment ``key``, the variable ``index`` and the place of its bytes
    filled in: ``exc`` itself if it names them all already, else a new error (the caller
    raises it ``from exc``)."""
    context = {name: value for name, value in vars(exc).items() if name != "message"}
    if context.get("key") == key and "index" in context and "file" in context:
        return exc  # located already
    context["key"] = key
    context.setdefault("index", index)
    if index is not None and context["index"] == index and context.get("file") is None:
        file, offset = where(backend, index)
        context["file"] = file
        if offset is not None or "offset" not in context:
            context["offset"] = offset
    context.setdefault("file", None)
    context.setdefault("offset", None)
    what = exc.message
    prefix = f"segment {key}"
    if context["index"] is not None:
        prefix += f" index {context['index']}"
    if what.startswith(prefix):
        what = what[len(prefix) :].lstrip(": ")
    place = _place(context["file"], context["offset"])
    return type(exc)(f"{prefix}{place}: {what}", **context)


def _place(file: str | None, offset: int | None) -> str:
    if file is not None and offset is not None:
        return f" ({file} at offset {offset})"
    if file is not None:
        return f" ({file})"
    if offset is not None:
        return f" (at offset {offset})"
    return ""


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
    from shmfs.backends import backend_class, backend_name  # noqa: PLC0415  # imports us
    from shmfs.segment import attach  # noqa: PLC0415  # segment imports this module
    from shmfs.validate import check_key, trusted_uids  # noqa: PLC0415

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
