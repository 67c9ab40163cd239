"""Read-modify-write without the segment lock, on a backend whose single changes are atomic.

Where each change is one atomic step of the backend's (:class:`~shmfs.backends.Atomic`: redis's
script calls), :meth:`~shmfs.segment.Segment.update`, ``incr`` and ``cas`` take no lock: they
compute the new value from a version of the old one and commit only if the index is still at
that version, else compute again from the value the refusal returned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shmfs import frame
from shmfs.backends import Atomic
from shmfs.errors import ShmfsError
from shmfs.forking import fork_epoch

__all__ = ["bytes_decide", "modify"]

#: ``change(old) -> (write, new)``: whether to store ``new``, and the value to answer.
Change = Callable[[Any], tuple[bool, Any]]


def bytes_decide(value: Any) -> bool:
    """Whether equal encodings of ``value`` and a stored value make them equal (``==``), for
    plain values: a NaN is not equal to itself, and a class may define equality as it likes."""
    kind = type(value)
    if kind is float:
        return bool(value == value)  # noqa: PLR0124  # False only for NaN
    return kind in {int, str, bytes, bool, type(None)}


def modify(
    atomic: Atomic,
    index: int,
    change: Change,
    default: Any,
    *,
    decode: Callable[[bytes], Any],
    encode: Callable[[Any], bytes | frame.Pieces],
    lock_timeout: float | None,
    key: int,
    known: tuple[object, bytes | None] | None = None,
) -> Any:
    """Apply ``change`` to the value at ``index`` (``default`` if empty) and return its answer.

    A remembered version saves the read; decisions not to write are made on a fresh one.
    ``known``: the (version, frame) of ``index`` just read by the caller.

    Raises:
        ShmfsError: a value's pickling forked this process (the child must not finish its
            parent's change).
        Whatever ``change``, ``decode``, ``encode`` or the backend's commit raise.
    """
    started = fork_epoch()
    fresh = True  # a state just read, by the caller or here
    if known is None:
        known = atomic.seen(index)
        fresh = known is None
        if known is None:
            known = atomic.peek(index)
    while True:
        version, data = known
        old = default if data is None else decode(data)
        try:
            write, new = change(old)
        except Exception:
            if fresh:
                raise
            known, fresh = atomic.peek(index), True  # the memory may be what misled it
            continue
        if not write:
            if fresh:
                return new
            known, fresh = atomic.peek(index), True
            continue
        encoded = encode(new)
        if fork_epoch() != started:
            # A value's pickling forked: the child must not finish, unlocked, the change
            # its parent began (the parent would then retry against the child's write).
            raise ShmfsError(
                f"segment {key}: this process forked while pickling a value for "
                "update(); the child cannot go on with its parent's change: start it again "
                "in the child"
            )
        done = atomic.commit(index, encoded, ("version", version), lock_timeout)  # type: ignore[arg-type]  # bytes: an atomic backend takes no pieces
        if done.done:
            return new
        known, fresh = (done.version, done.current), True
