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
from typing import Any

from shmfs.errors import CorruptSegment

__all__ = ["located", "where"]


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
