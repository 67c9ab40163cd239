"""Cache entries: their shape in a variable, when they are live, and the locked rewrite of one.

A variable at an entry index holds one entry, ``(canonical key, value, expires, written)``, or,
when keys' indices collide, a *bucket* ``{canonical key: (value, expires, written)}``. Every
reader compares canonical keys, so colliding keys are told apart, never confused. Tuples come
back as lists through the json and php codecs, so both are accepted; anything else in the
variable is a stranger's and holds no entry.

Expiry is an absolute wall-clock time (``time.time() + ttl``): the one clock all processes of a
host share (``CLOCK_REALTIME``: Linux time namespaces shift only the monotonic and boot clocks,
and monotonic time means nothing across boots or hosts). An entry is live while
``written <= now < expires`` on the *reader's* clock, so a clock stepped forward expires entries
early, and one stepped back hides the entries written "in the future" until it catches up: both
err towards a miss, never towards serving an entry past its time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Final

from shmfs.cache.keys import FIRST_ENTRY, decode_canonical
from shmfs.errors import InvalidArgument
from shmfs.segment import Segment

__all__ = [
    "KEEP",
    "MISSING",
    "Change",
    "Entry",
    "check_ttl",
    "clock",
    "entries",
    "find",
    "live",
    "live_keys",
    "merged",
    "overwrite",
    "rewrite",
    "sweep",
]

#: The cache's clock: wall-clock seconds. Tests replace ``shmfs.cache.entry.clock`` to move time
#: without sleeping.
clock: Callable[[], float] = time.time

#: Returned by a change function: "leave the variable as it is".
KEEP: Final[Any] = object()
#: "No value": a default that cannot be a value stored by a user.
MISSING: Final[Any] = object()

Entry = tuple[str, Any, float | None, float]  # canonical key, value, expires, written
#: ``change(live entry or None, now) -> (answer, new entry | None to remove it | KEEP)``
Change = Callable[[Entry | None, float], tuple[Any, Any]]


def check_ttl(ttl: Any) -> float | None:
    """A ttl in seconds; ``None`` (and ``math.inf``, which says so explicitly): never expires.

    Raises:
        InvalidArgument: not a number > 0.
    """
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0:
        raise InvalidArgument(
            f"ttl must be a number of seconds > 0, None or math.inf (never), not {ttl!r}"
        )
    return None if ttl == float("inf") else float(ttl)


def entries(stored: Any) -> list[Entry]:
    """The entries a variable holds: one, a bucket of several, or none if it is not ours."""
    kind = type(stored)
    if (kind is tuple or kind is list) and len(stored) == 4 and type(stored[0]) is str:
        return [tuple(stored)]  # shape checked; json and php give lists
    if kind is dict:
        return [
            (text, *entry)
            for text, entry in stored.items()
            if type(text) is str and type(entry) in (tuple, list) and len(entry) == 3
        ]
    return []


def live(entry: Entry, now: float) -> bool:
    """Whether ``entry`` may be returned at ``now`` (see the module docstring)."""
    expires = entry[2]
    return (expires is None or now < expires) and entry[3] <= now


def find(stored: Any, text: str) -> Entry | None:
    """The entry for canonical key ``text`` in a variable, live or not."""
    for entry in entries(stored):
        if entry[0] == text:
            return entry
    return None


def _split(stored: Any, text: str, now: float) -> tuple[Entry | None, dict[str, tuple[Any, ...]]]:
    """``text``'s live entry in a variable, and the other live entries it holds, by key."""
    if type(stored) is tuple and len(stored) == 4 and stored[0] == text:
        return (stored if live(stored, now) else None), {}  # the common case
    ours, others = None, {}
    for entry in entries(stored):  # a bucket, another key's entry, json's lists, or nothing
        if not live(entry, now):
            continue  # dropped, since the variable is rewritten anyway
        if entry[0] == text:
            ours = entry
        else:
            others[entry[0]] = entry[1:]
    return ours, others


def merged(stored: Any, entry: Entry, now: float) -> Any:
    """What a variable holding ``stored`` holds once ``entry`` is set in it: ``entry`` alone,
    or a bucket of it and the live entries of the other keys there (expired ones dropped)."""
    _, others = _split(stored, entry[0], now)
    if not others:
        return entry
    others[entry[0]] = entry[1:]
    return others


def rewrite(segment: Segment, index: int, text: str, change: Change) -> tuple[Any, bool, float]:
    """One read-modify-write of the variable at ``index``, under the segment lock.

    ``change`` sees ``text``'s live entry (or ``None``) and answers what to store. Expired
    entries of other keys in the same bucket are dropped on the way.

    Returns:
        ``(change's answer, whether an entry was stored, the time used)``.

    Raises:
        SegmentFull: the new entry does not fit; nothing was changed.
        The errors of ``Segment.get``, ``put`` and ``remove``.
    """
    with segment.lock():
        now = clock()
        stored = segment.get(index, None)
        ours, others = _split(stored, text, now)
        answer, new = change(ours, now)
        if new is KEEP:
            return answer, False, now
        if new is not None and not others:
            segment.put(index, new)  # the common case
            return answer, True, now
        if new is not None:
            others[text] = new[1:]
        if len(others) > 1:
            segment.put(index, others)
        elif others:  # the single-entry form
            ((only, rest),) = others.items()
            segment.put(index, (only, *rest))
        elif stored is not None:
            segment.remove(index)
    return answer, new is not None, now


def overwrite(
    segment: Segment, index: int, text: str, value: Any, life: float | None
) -> float | None:
    """``set``'s fast path: under the lock, store ``text``'s entry if its variable is empty or
    holds ``text``'s entry alone, as it nearly always does.

    Returns:
        The time used for ``written``, or ``None`` if the variable holds other keys' entries
        (then ``rewrite`` does the job).

    Raises:
        SegmentFull: the entry does not fit; nothing was changed.
        The errors of ``Segment.get`` and ``put``.
    """
    with segment.lock():
        now = clock()
        stored = segment.get(index, None)
        kind = type(stored)
        if stored is None or (
            (kind is tuple or kind is list) and len(stored) == 4 and stored[0] == text
        ):
            segment.put(index, (text, value, None if life is None else now + life, now))
            return now
    return None


def live_keys(segment: Segment) -> Iterator[Any]:
    """The keys of the live entries in ``segment``, in index order (a hash: no meaning)."""
    for index in list(segment):
        if index >= FIRST_ENTRY:
            now = clock()
            for entry in entries(segment.get(index, None)):
                if live(entry, now):
                    yield decode_canonical(entry[0])


def sweep(segment: Segment) -> int:
    """Remove every expired entry (memoize leases too, at negative indices); how many.

    Each variable is read without the lock first, so only the ones holding an expired entry
    are locked and rewritten.
    """
    removed = 0
    for index in list(segment):
        if -FIRST_ENTRY < index < FIRST_ENTRY:
            continue
        if all(live(entry, clock()) for entry in entries(segment.get(index, None))):
            continue
        with segment.lock():  # look again: it may have been rewritten since
            now = clock()
            held = entries(segment.get(index, None))
            kept = {entry[0]: entry[1:] for entry in held if live(entry, now)}
            if len(kept) == len(held):
                continue
            removed += len(held) - len(kept)
            if not kept:
                segment.remove(index)
            elif len(kept) == 1:
                ((text, rest),) = kept.items()
                segment.put(index, (text, *rest))
            else:
                segment.put(index, kept)
    return removed
