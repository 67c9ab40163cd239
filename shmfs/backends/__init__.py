"""The backend seam: what a storage backend must do, and the name -> class registry.

A backend moves framed bytes (see :mod:`shmfs.frame`) between a segment's variables and the
caller. It does not validate keys, encode values, check trust rules or manage handle lifecycles:
:class:`shmfs.segment.Segment` does all of that once, for every backend. The only backend-specific
knowledge the segment needs is carried by the attributes the :class:`Backend` Protocol declares
(``native_codec``, ``lock_free_reads``, ``trust_option``) and by the optional capabilities that
:func:`capabilities` reads with their defaults, never by testing a backend's name.

A backend may offer a fast path for small values (:class:`Hot`, tmpfs's C module); its calls
answer :data:`SLOW` outside the common case, which the one sentinel defined here stands for in
Python and in C alike (the C module takes it from this module).

Backends are imported lazily, so the ``sysv`` and ``redis`` extras are only needed by their users.

A little over 400 lines because it is one interface, read as a whole by whoever writes a backend:
its length is the documentation of each call and capability; the code is declarations.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Protocol, Self

from shmfs.errors import BackendUnavailable, InvalidArgument, SegmentFull
from shmfs.frame import Pieces, Split

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "SLOW",
    "Atomic",
    "Backend",
    "Capabilities",
    "Committed",
    "Expect",
    "Hot",
    "SegmentInfo",
    "Watcher",
    "backend_class",
    "backend_name",
    "capabilities",
    "refuse_options",
    "segment_full",
    "write_each",
]


#: "Do it the Python way": what a :class:`Hot` call answers outside the common case. The C
#: module imports this very object, so there is one ``SLOW``.
SLOW: Final[object] = object()

#: The backend used when neither ``backend=`` nor ``$SHMFS_BACKEND`` names one.
DEFAULT_BACKEND: Final = "tmpfs"


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """What ``stats()`` and ``shmfs.segments()`` report about one segment."""

    key: int
    backend: str
    size: int
    used: int
    variables: int
    perm: int
    owner: int
    location: str
    created: float | None = None
    creator_pid: int | None = None
    #: Processes attached right now, where the backend can tell (System V's ``nattch``).
    attached: int | None = None
    #: Where the bytes go, where the backend can tell (tmpfs: bytes of slab, index and large
    #: files, and the slot bytes not holding a value).
    storage: dict[str, int] | None = None
    #: What is wrong, for a segment listed although its metadata is damaged (``None``: sound);
    #: its numbers are then what could be read, zero where nothing could.
    damaged: str | None = None

    @property
    def free(self) -> int:
        """Bytes still available for values."""
        return max(self.size - self.used, 0)

    def as_dict(self) -> dict[str, Any]:
        """The report as a plain dict, ``free`` included, for ``--json`` and ``stats()``."""
        return {
            "key": self.key,
            "backend": self.backend,
            "size": self.size,
            "used": self.used,
            "free": self.free,
            "variables": self.variables,
            "perm": self.perm,
            "owner": self.owner,
            "location": self.location,
            "created": self.created,
            "creator_pid": self.creator_pid,
            "attached": self.attached,
            "storage": self.storage,
            "damaged": self.damaged,
        }


class Watcher(Protocol):
    """A registration as a waiter on one segment, made by ``Backend.watcher()``."""

    def fileno(self) -> int | None:
        """A descriptor that turns readable on a change, or ``None`` if the backend polls."""
        ...

    def wait(self, timeout: float) -> None:
        """Sleep until a change may have happened, or ``timeout`` seconds."""
        ...

    def drain(self) -> None:
        """Forget wake-ups already delivered (after the descriptor was readable)."""
        ...

    def close(self) -> None:
        """Stop waiting; idempotent."""
        ...


class Hot(Protocol):
    """A backend handle's fast path for small values (tmpfs's ``shmfs._hot.Hot``).

    Every call answers :data:`SLOW` when it cannot do the job in full (a missing or large value,
    a lock to wait for, damage, a closed handle): the caller then takes the Python path, which
    does the work as it always has and reports any error.
    """

    def get(self, index: int) -> Any:
        """The value at a mapped ``index``, or :data:`SLOW`."""

    def get_many(self, indexes: list[int]) -> Any:
        """``{index: value}`` of those ``indexes`` that hold one, read in one consistent step
        as ``Segment.get_many`` promises, or :data:`SLOW` (having decoded nothing)."""

    def put(  # noqa: PLR0917  # the C module's call: positional, as its vectorcall takes them
        self,
        index: int,
        codec_id: int,
        value: Any,
        head_at: int = 0,
        head: bytes = b"",
        or_absent: bool = False,
    ) -> Any:
        """``None`` once a plain ``value`` is stored at ``index``, or SLOW; with ``head_at``
        and ``head``, only over a stored pickle that has ``head`` there too (or, with
        ``or_absent``, where ``index`` holds no value)."""

    def reset(self, lock: object, recoveries: int, dirty_tag: int) -> None:
        """After opening, a fork, or a recovery: the lock (its ``locking.LockInterface``),
        RECOVERIES and DIRTY word to use."""

    def close(self) -> None:
        """Drop every reference; every call is SLOW from then on."""


#: What :meth:`Atomic.commit` requires of an index before it writes: ``("any", None)`` nothing,
#: ``("absent", None)`` no value, ``("version", v)`` still at version ``v`` (as an earlier reply
#: gave it), ``("bytes", b)`` holding exactly the frame ``b``.
Expect = tuple[str, object]


@dataclass(frozen=True, slots=True)
class Committed:
    """What :meth:`Atomic.commit` did: ``done``, the index's ``version`` after the write (or,
    when not done, as found), and, when not done, the ``current`` frame found (``None``: none)."""

    done: bool
    version: object
    current: bytes | None = None


class Atomic(Protocol):
    """A backend whose single changes are each one atomic step that takes no segment lock from
    the caller (redis: one script call). Each step waits out the explicit lock (``acquire``)
    of another holder, up to ``timeout``, and raises ``LockTimeout`` after; made by the thread
    holding that lock, it is fenced by it. A step raises only when it did not commit, except
    when the backend cannot know (``BackendUnavailable`` with ``committed=None``)."""

    def commit(self, index: int, data: bytes, expect: Expect, timeout: float | None) -> Committed:
        """Store ``data`` at ``index`` if ``expect`` holds; ``SegmentFull`` if it does not fit."""
        ...

    def discard(self, index: int, timeout: float | None) -> bool:
        """Remove ``index``; whether it held a value."""
        ...

    def clear(self, timeout: float | None) -> None:
        """Remove every variable at once."""
        ...

    def destroy(self, timeout: float | None) -> None:
        """Remove the segment for every process."""
        ...

    def seen(self, index: int) -> tuple[object, bytes | None] | None:
        """The last (version, frame) of ``index`` this handle saw, perhaps stale; ``None``."""
        ...

    def commit_many(self, items: list[tuple[int, bytes]], timeout: float | None) -> None:
        """Store every ``(index, data)`` in one atomic step, or none (``SegmentFull`` for the
        whole batch if they do not all fit)."""
        ...

    def peek(self, index: int) -> tuple[object, bytes | None]:
        """The (version, frame) of ``index`` now, in one step."""
        ...

    def add_int(
        self,
        index: int,
        delta: int,
        default: int,
        *,
        codec: int,
        pickles: bool,
        timeout: float | None,
    ) -> int | tuple[object, bytes | None] | None:
        """Add ``delta`` to the integer at ``index`` (``default`` if empty) in one step, storing
        it as codec ``codec`` (an id) writes it, unsigned; return the new value. ``pickles``:
        whether pickles read from the backend may be decoded. ``None``: the backend does not
        do this for these arguments (nothing was read); a ``(version, frame)``: the index does
        not hold an integer it reads (nothing was written), as found, for the general path."""
        ...


#: ``pin(index, timeout)``: see :class:`Capabilities`.
Pin = Callable[[int, float | None], AbstractContextManager[memoryview | None]]
#: ``read_many(indexes)``: see :class:`Capabilities`.
ReadMany = Callable[[list[int]], list[bytes | None]]
#: ``read_packed(indexes)``: see :class:`Capabilities`.
ReadPacked = Callable[[list[int]], bytes]
#: ``write_many(items)``: see :class:`Capabilities`.
WriteMany = Callable[[list[tuple[int, bytes | Pieces]]], None]


class Backend(Protocol):
    """One open segment on some storage: framed bytes in, framed bytes out.

    Mutating methods (``write``, ``delete``, ``clear``, ``destroy``) are called with the segment
    lock held (``acquire``); ``read`` may be called without it where ``lock_free_reads`` is true.
    A backend that finds its segment destroyed raises ``SegmentNotFound``.

    Besides the members below, a backend may offer the optional capabilities that
    :class:`Capabilities` lists; :func:`capabilities` reads them, with their defaults for a
    backend that does not (tmpfs has the first three and ``write_many``, redis ``atomic``,
    ``read_many`` and ``read_packed``, sysv none: every backend has ``write_many``, by default
    :func:`write_each`).
    """

    #: The registry name.
    name: ClassVar[str]
    #: A codec whose bare payloads (no shmfs frame) the backend may hold, or ``None``.
    native_codec: ClassVar[str | None]
    #: Whether ``read`` is consistent without the lock (else the segment takes it for reads).
    lock_free_reads: ClassVar[bool]
    #: The ``attach`` option that widens who is trusted to have written pickles, for messages.
    trust_option: ClassVar[str]

    key: int
    size: int
    perm: int

    @classmethod
    def open(
        cls,
        key: int,
        size: int,
        perm: int,
        *,
        root: str | None,
        trust_uids: frozenset[int],
        **options: Any,
    ) -> Self:
        """Open the segment ``key``, creating it with ``size`` and ``perm`` if absent.

        ``options`` are the backend's own (``sem_key`` for sysv); an unknown one raises
        ``InvalidArgument``.
        """
        ...

    @classmethod
    def list_segments(cls, root: str | None) -> list[SegmentInfo]:
        """Report every segment this backend can see under ``root``."""
        ...

    @classmethod
    def scope(cls, root: str | None) -> str:
        """Where this backend looks for segments, for messages ("under /dev/shm/...")."""
        ...

    def read(self, index: int) -> bytes | memoryview | Split | None:
        """Return the stored bytes of ``index``, or ``None`` if it holds no value.

        A memoryview may be of a buffer the backend reuses: decode it before the next read. A
        :class:`~shmfs.frame.Split` is a frame read in pieces (``frame.decode`` takes it).
        """
        ...

    def write(self, index: int, data: bytes | Pieces) -> None:
        """Store ``data`` at ``index``, atomically; ``SegmentFull`` leaves the old value.

        ``Pieces`` come only to a backend whose class sets ``writes_pieces = True``; the others
        get ``bytes``."""
        ...

    def delete(self, index: int) -> bool:
        """Remove ``index``, zeroing its bytes first; return whether it existed."""
        ...

    def indices(self) -> list[int]:
        """Return the indices that hold values, ascending."""
        ...

    def count(self) -> int:
        """Return the number of variables."""
        ...

    def trusted(self, index: int) -> bool:
        """Whether only trusted uids can have written the bytes ``read(index)`` returned."""
        ...

    def version(self, index: int) -> object:
        """A token that changes whenever ``index`` is written or removed; ``None`` if absent."""
        ...

    def watcher(self) -> Watcher:
        """Register as a waiter, so that writers wake this process on their next change."""
        ...

    def acquire(self, timeout: float | None) -> None:
        """Take the segment lock (re-entrant for the calling thread)."""
        ...

    def release(self) -> None:
        """Release the segment lock."""
        ...

    def lock_held(self) -> bool:
        """Whether the calling thread holds the segment lock."""
        ...

    def info(self) -> SegmentInfo:
        """Report on the segment."""
        ...

    def close(self) -> None:
        """Release this handle's resources; the segment stays. Idempotent. A thread of ours
        that holds the lock, or is taking it, keeps what it uses: the resources go when it lets
        go of the lock (``locking.ReentrantLock.close``), and later takes raise
        ``SegmentDetached``."""
        ...

    def destroy(self) -> None:
        """Wipe and remove the segment for every process."""
        ...


@dataclass(frozen=True, slots=True)
class Capabilities:
    """The optional capabilities of a backend, and their defaults.

    Attributes:
        hot: The instance attribute ``hot``: a :class:`Hot` fast path for small values, or
            ``None`` (the default: every value takes the Python path).
        writes_pieces: The class attribute ``writes_pieces``: ``write`` takes a large frame as
            :class:`~shmfs.frame.Pieces` (default ``False``: always ``bytes``).
        pin: The method ``pin(index, timeout)``, a context manager giving the stored frame in
            place (``None`` if absent), unchanging until it exits, so ``Segment.view`` is
            zero-copy; default ``None``: ``view`` decodes a private copy.
        atomic: The instance attribute ``atomic``: an :class:`Atomic` through which single
            changes take no segment lock (default ``None``: they take it).
        write_many: The method ``write_many(items)``: store every ``(index, data)`` pair, lock
            held, all or none (``SegmentFull`` leaves every old value). Default
            :func:`write_each`: ``write`` in a loop, the old frames put back if one fails.
            tmpfs's publishes the whole batch with one store, so that a writer killed
            mid-batch leaves all old values or all new ones.
        read_many: The method ``read_many(indexes)``: the frames of ``indexes`` (``None``:
            absent) read in one step without the segment lock (redis: one ``HMGET``).
            Default ``None``: the segment reads them one by one under one lock.
        read_packed: The method ``read_packed(indexes)``: what ``read_many`` reads, packed
            in one string as :mod:`shmfs.packed` says (redis: one ``HMGET`` whose reply the C
            module reads off the socket and packs so, or one script reply packed so by the
            server), for the C module to decode in one call; its backend's
            ``trusted`` must not depend on the index. Default ``None``.
    """

    hot: Hot | None = None
    writes_pieces: bool = False
    pin: Pin | None = None
    atomic: Atomic | None = None
    write_many: WriteMany | None = None
    read_many: ReadMany | None = None
    read_packed: ReadPacked | None = None


def capabilities(backend: Backend) -> Capabilities:
    """The optional capabilities ``backend`` offers, the defaults standing for those it lacks."""
    return Capabilities(
        hot=getattr(backend, "hot", None),
        writes_pieces=bool(getattr(backend, "writes_pieces", False)),
        pin=getattr(backend, "pin", None),
        atomic=getattr(backend, "atomic", None),
        write_many=getattr(backend, "write_many", None) or functools.partial(write_each, backend),
        read_many=getattr(backend, "read_many", None),
        read_packed=getattr(backend, "read_packed", None),
    )


def write_each(backend: Backend, items: list[tuple[int, bytes | Pieces]]) -> None:
    """The default ``write_many``: each pair with ``write``, under the lock the caller holds.

    A failure (``SegmentFull``, an I/O error) puts back the old frames of the indices already
    written, newest first, so the segment is as before; then the failure is raised. Restoring
    fits, since the old frames fitted before. A writer killed mid-loop leaves each variable old
    or new, as ``write`` does, but the batch may be part written (the README says so).
    """
    done: list[tuple[int, bytes | None]] = []
    try:
        for index, data in items:
            old = _frame_bytes(backend.read(index))
            backend.write(index, data)
            done.append((index, old))
    except BaseException:
        for index, old in reversed(done):
            if old is None:
                backend.delete(index)
            else:
                backend.write(index, old)
        raise


def _frame_bytes(data: bytes | memoryview | Split | None) -> bytes | None:
    """A private copy of a frame ``read`` gave (its memoryview may be of a reused buffer)."""
    if data is None or type(data) is bytes:
        return data
    if isinstance(data, Split):
        return b"".join(data)
    return bytes(data)


def backend_name(name: str | None) -> str:
    """The backend to use: ``name``, else ``$SHMFS_BACKEND``, else :data:`DEFAULT_BACKEND`."""
    return name or os.environ.get("SHMFS_BACKEND") or DEFAULT_BACKEND


#: Registry: backend name -> "module:Class", imported on first use.
BACKENDS: dict[str, str] = {
    "tmpfs": "shmfs.backends.tmpfs:TmpfsBackend",
    "sysv": "shmfs.backends.sysv.backend:SysvBackend",
    "redis": "shmfs.backends.redis.backend:RedisBackend",
}


def backend_class(name: str) -> type[Backend]:
    """Return the backend class registered as ``name``.

    Raises:
        InvalidArgument: no backend has that name.
    """
    try:
        target = BACKENDS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(BACKENDS))
        raise InvalidArgument(f"unknown backend {name!r}; choose one of: {known}") from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailable(
            f"the {name} backend needs a package that is not installed ({exc.name}): "
            f"pip install 'shmfs[{name}]'"
        ) from exc
    cls: type[Backend] = getattr(module, class_name)
    return cls


def refuse_options(backend: str, options: dict[str, Any]) -> None:
    """Raise ``InvalidArgument`` naming options a backend does not take."""
    if options:
        names = ", ".join(sorted(options))
        raise InvalidArgument(f"the {backend} backend takes no option {names}")


def segment_full(
    key: int, index: int, needed: int, size: int, used: int, *, extra: Iterable[str] = ()
) -> SegmentFull:
    """Build the error for a value that does not fit in a segment's ``size``."""
    hint = " ".join(extra)
    return SegmentFull(
        f"segment {key}: a {needed}-byte value does not fit at index {index} "
        f"({used} of {size} bytes used); attach with a bigger size= or remove variables"
        + (f" {hint}" if hint else ""),
        key=key,
        index=index,
        needed=needed,
        size=size,
        used=used,
    )
