"""``shmfs.check``: verify every byte a segment holds, and repair what can be repaired.

Each backend that keeps its own bookkeeping has a checker beside it
(``backends/tmpfs/check.py``, ``backends/sysv/check.py``), offered as the class's optional
``check_segment`` classmethod; a backend without one (redis: the server keeps the structure, so
there is nothing of ours to rebuild) is checked here through the public API, value by value.
A checker works under the segment lock on the segment's raw bytes, not through ``attach``, so
it can look at, and mend, a segment whose metadata no longer opens.

With ``repair=True`` a checker rebuilds what the segment's other bytes determine (an index from
the slabs, counters, free lists, a PHP header's ``free`` and ``end``), drops the variables whose
bytes fail their checks (their indices are listed in the report), and the segment is then
checked again: ``remaining`` is what that second pass still found.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from shmfs import frame
from shmfs.backends import backend_class, backend_name
from shmfs.codecs import get_codec
from shmfs.errors import CorruptSegment, SegmentNotFound, SerializationError, UnsafeSegment
from shmfs.validate import check_key, trusted_uids

__all__ = ["CLEAN", "DAMAGED", "LOST", "CheckReport", "Problem", "check", "frame_problem"]

#: Exit statuses of ``shmfs check`` (``CheckReport.status``).
CLEAN: Final = 0
DAMAGED: Final = 1
LOST: Final = 2


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing found wrong: what, and where (the variable, file and offset, if known)."""

    what: str
    index: int | None = None
    file: str | None = None
    offset: int | None = None

    def __str__(self) -> str:
        where = [f"index {self.index}"] if self.index is not None else []
        if self.file is not None:
            where.append(self.file)
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        return f"{', '.join(where)}: {self.what}" if where else self.what


@dataclass(slots=True)
class Outcome:
    """What a backend's checker found, and, repairing, what it did."""

    problems: list[Problem] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)

    def add(self, what: str, **where: Any) -> None:
        """Note a problem."""
        self.problems.append(Problem(what, **where))


class Checker(Protocol):
    """A backend's ``check_segment`` classmethod."""

    def __call__(
        self, key: int, *, root: str | None, trust_uids: frozenset[int], repair: bool
    ) -> Outcome: ...


@dataclass(frozen=True, slots=True)
class CheckReport:
    """What :func:`check` found in one segment.

    Attributes:
        key: The segment key.
        backend: The backend's name.
        problems: Everything found wrong, before any repair.
        repairs: What ``repair=True`` rebuilt.
        dropped: Indices of the variables ``repair=True`` removed because their bytes could not
            be recovered, ascending.
        remaining: What is still wrong after the repair (a check without ``repair`` repeats
            ``problems`` here).
    """

    key: int
    backend: str
    problems: list[Problem]
    repairs: list[str]
    dropped: list[int]
    remaining: list[Problem]

    @property
    def clean(self) -> bool:
        """Whether the segment checks clean now (after the repair, if one was asked for)."""
        return not self.remaining

    @property
    def status(self) -> int:
        """``shmfs check``'s exit status: 0 clean (nothing found, or repaired losing no
        variable), 1 damage found and left as it is, 2 repaired with variables dropped, or
        not repairable."""
        if self.remaining and not self.repairs and not self.dropped:
            return DAMAGED
        if self.remaining or self.dropped:
            return LOST
        return CLEAN

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data, for ``--json``."""

        def plain(problems: list[Problem]) -> list[dict[str, Any]]:
            return [
                {"what": p.what, "index": p.index, "file": p.file, "offset": p.offset}
                for p in problems
            ]

        return {
            "key": self.key,
            "backend": self.backend,
            "clean": self.clean,
            "status": self.status,
            "problems": plain(self.problems),
            "repairs": list(self.repairs),
            "dropped": list(self.dropped),
            "remaining": plain(self.remaining),
        }


def frame_problem(data: bytes | memoryview | frame.Split, native_codec: str | None) -> str | None:
    """What is wrong with one stored value's bytes, or ``None`` if they pass every check
    that needs no secret: the frame's header, length and checksum, or for a backend's bare
    native value (PHP's ``serialize()`` bytes on sysv), that it decodes."""
    if native_codec is not None and not isinstance(data, frame.Split):
        view = memoryview(data)
        if bytes(view[: len(frame.MAGIC)]) != frame.MAGIC:
            try:
                get_codec(native_codec).decode(view)
            except (SerializationError, ValueError, TypeError) as exc:
                return f"the {native_codec} value does not decode: {exc}"
            return None
    try:
        frame.decode(data, None)
    except CorruptSegment as exc:
        return exc.message
    except UnsafeSegment:
        return None  # a signed value: its checksum passed, its signature needs the secret
    return None


def check(
    key: int,
    *,
    repair: bool = False,
    backend: str | None = None,
    root: str | None = None,
    trust_uids: Iterable[int] | None = None,
) -> CheckReport:
    """Verify everything segment ``key`` holds; with ``repair``, mend it (``shmfs check``).

    Verified: the metadata, the index, every variable's frame (header, length, checksum) and
    the bookkeeping around them (tmpfs: slots, free lists, counters, stray files; sysv: PHP's
    header and chunk chain; redis: each variable's frame). Repairing rebuilds what the other
    bytes determine and drops the variables that cannot be recovered; docs/cli.md ("Damage")
    says what each backend can rebuild. Not from inside ``with seg.lock()`` on the same
    segment in this process: the check takes the lock through a descriptor of its own, which
    would wait for this process's hold for ever.

    Args:
        key: The segment key.
        repair: Mend what is found, under the segment lock.
        backend: ``"tmpfs"`` (default), ``"sysv"`` or ``"redis"``; default ``$SHMFS_BACKEND``.
        root: Where segments live, as for :func:`shmfs.attach`.
        trust_uids: Users, besides this one and root, whose segments may be checked.

    Returns:
        A :class:`CheckReport`; ``report.status`` is ``shmfs check``'s exit status.

    Raises:
        InvalidKey: ``key`` is 0 or out of range.
        SegmentNotFound: no segment ``key`` exists.
        UnsafeSegment: a symlink or a foreign owner is in the way.
        LockTimeout: never (the lock is waited for).
        BackendUnavailable: the backend cannot be reached.
    """
    key = check_key(key)
    name = backend_name(backend)
    trusted = trusted_uids(trust_uids)
    checker: Checker | None = getattr(backend_class(name), "check_segment", None)
    if checker is None:
        first = _check_values(key, name, root, trusted, repair=repair)
        again = _check_values(key, name, root, trusted, repair=False) if repair else first
    else:
        first = checker(key, root=root, trust_uids=trusted, repair=repair)
        again = checker(key, root=root, trust_uids=trusted, repair=False) if repair else first
    return CheckReport(
        key=key,
        backend=name,
        problems=first.problems,
        repairs=first.repairs,
        dropped=sorted(set(first.dropped)),
        remaining=again.problems,
    )


def _check_values(
    key: int, name: str, root: str | None, trusted: frozenset[int], *, repair: bool
) -> Outcome:
    """The check of a backend without a checker of its own: each variable's frame, read with
    the lock held (on redis the server keeps the rest); repairing removes those that fail."""
    cls = backend_class(name)
    if not any(info.key == key for info in cls.list_segments(root)):
        raise SegmentNotFound(f"no segment with key {key} {cls.scope(root)}", key=key)
    outcome = Outcome()
    try:
        opened = cls.open(key, 10000, 0o600, root=root, trust_uids=trusted)
    except CorruptSegment as exc:
        outcome.add(f"the segment does not open: {exc.message}")
        return outcome
    try:
        opened.acquire(None)
        try:
            for index in opened.indices():
                try:
                    data = opened.read(index)
                except CorruptSegment as exc:  # a value the server lost part of (evicted)
                    problem: str | None = exc.message
                else:
                    problem = None if data is None else frame_problem(data, cls.native_codec)
                if problem is None:
                    continue
                outcome.add(problem, index=index)
                if repair and opened.delete(index):
                    outcome.dropped.append(index)
        finally:
            opened.release()
    finally:
        opened.close()
    return outcome
