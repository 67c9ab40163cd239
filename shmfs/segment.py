"""``attach()`` and ``Segment``: the rules every backend shares.

A backend moves framed bytes (``shmfs.backends``). Everything else happens here, once: checking
keys and indices, encoding and framing values, deciding whether bytes may be unpickled, taking
the segment lock around writes and read-modify-writes, translating errors, and the handle's
lifecycle (detach, destroy, pickling by reference).

How a call reaches the backend (the lock-then-act contexts, and a closed handle's errors said
as such) is in ``access.py``; how a value becomes stored bytes and back (codec, frame, secret,
the trust check) in ``coder.py``; read-modify-write without a lock, where the backend's single
changes are atomic, in ``optimistic.py``.

Longer than 400 lines because ``Segment`` is one class, the public API: a third of its length is
the docstrings of its public calls, and its code owns one piece of state, the open backend; what
can be said without that state lives in the modules above.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from types import TracebackType
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

from shmfs import batch, codecs, damage, frame, hotpath, optimistic, waiting
from shmfs.access import Holding, Locked, Watched
from shmfs.backends import (
    SLOW,
    Atomic,
    Backend,
    Hot,
    Pin,
    backend_class,
    backend_name,
    capabilities,
)
from shmfs.coder import Coder
from shmfs.errors import (
    CorruptSegment,
    SegmentDetached,
    SegmentNotFound,
    SerializationError,
    VariableNotFound,
)
from shmfs.validate import check_index, check_key, check_options, trusted_uids

__all__ = ["Segment", "attach", "segments"]

_MISSING: Final[Any] = object()  # "no default given"
#: Where an unpickled handle of a signed segment finds its secret (a pickle carries none).
SECRET_ENV: Final = "SHMFS_SECRET"
_ABSENT: Final[Any] = object()  # "the index holds no value", inside read-modify-write
_INDEX_MIN: Final = -(1 << 63)
_INDEX_MAX: Final = (1 << 63) - 1
# What the fast path's get_many takes as it is (anything else goes through check_indexes).
_SEQUENCES: Final = (list, tuple)

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _detached_says_so(
    method: Callable[Concatenate[Segment, _P], _R],
) -> Callable[Concatenate[Segment, _P], _R]:
    """A call that fails because another thread (or a finalizer) detached or destroyed the
    handle meanwhile raises what a call after that would: ``SegmentDetached`` or
    ``SegmentNotFound``, never what the closed backend happened to raise."""

    @functools.wraps(method)
    def checked(self: Segment, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            _said_closed(self, exc)
            raise

    return checked


def _said_closed(segment: Segment, exc: Exception) -> None:
    """Raise what :func:`_detached_says_so` raises for ``exc``, if anything other than it."""
    segment._say_closed(exc)
    if isinstance(exc, CorruptSegment) and getattr(exc, "key", None) is None:
        raise damage.located(exc, None, segment.key, None) from exc  # the key, at least


def attach(
    key: int,
    size: int = 10000,
    perm: int = 0o600,
    *,
    backend: str | None = None,
    root: str | None = None,
    codec: str = "cloudpickle",
    lock_timeout: float | None = None,
    secret: bytes | str | None = None,
    trust_uids: Iterable[int] | None = None,
    **options: Any,
) -> Segment:
    """Attach the segment ``key``, creating it if absent (PHP: ``shm_attach``).

    Args:
        key: The segment's System V key: signed 32-bit, non-zero (see :func:`shmfs.ftok`).
        size: Capacity in bytes when creating; an existing segment keeps its own.
        perm: Permission bits when creating (files ``perm & 0o666``); the umask is ignored.
        backend: ``"tmpfs"`` (default), ``"sysv"`` or ``"redis"``; default ``$SHMFS_BACKEND``.
        root: Where segments live; default ``$SHMFS_ROOT`` or the backend's own default.
        codec: How this handle encodes values: ``cloudpickle``, ``pickle``, ``json``, ``raw``,
            ``php``. Reading decodes whatever codec the writer used.
        lock_timeout: Seconds to wait for the segment lock on writes; ``None`` waits for ever.
        secret: Sign every value with HMAC-SHA256, bound to the segment key and its index, and
            refuse values not signed so. A pickled handle does not carry it: the process that
            unpickles one supplies it in ``$SHMFS_SECRET``.
        trust_uids: Users, besides this one and root, whose pickled values may be decoded.
        **options: The backend's own options: ``sem_key=`` for ``sysv`` (the semaphore set PHP
            code guards the segment with; default: the segment's key); ``lock_expiry=``
            (seconds, default 10), ``trust_server=`` and ``allow_eviction=`` for ``redis`` (see
            docs/redis.md).

    Returns:
        A :class:`Segment` handle.

    Raises:
        InvalidKeyType: ``key`` is not an int.
        InvalidKey: ``key`` is 0 or out of range.
        InvalidArgument: a bad ``size``, ``perm``, ``codec``, ``backend`` or ``lock_timeout``.
        UnsafeSegment: a symlink, a foreign owner or an unsafe root is in the way.
        BackendUnavailable: the backend cannot be reached.
        SegmentFull: the filesystem has no room for the segment.
        CorruptSegment: the existing segment's metadata is damaged.
    """
    key = check_key(key)
    size, perm = check_options(size, perm, lock_timeout)
    chosen_backend = backend_name(backend)
    chosen = codecs.get_codec(codec)
    if isinstance(secret, str):
        secret = secret.encode()
    trusted = trusted_uids(trust_uids)
    opened = backend_class(chosen_backend).open(
        key, size, perm, root=root, trust_uids=trusted, **options
    )
    spec = {
        "key": key,
        "size": size,
        "perm": perm,
        "backend": chosen_backend,
        "root": root,
        "codec": codec,
        "lock_timeout": lock_timeout,
        "trust_uids": sorted(trusted),
        **options,
    }
    if secret is not None:
        # The secret itself never goes in the spec: the spec is what a pickle carries.
        spec["signed"] = True
    return Segment(opened, chosen, secret, lock_timeout, spec)


def segments(*, backend: str | None = None, root: str | None = None) -> list[dict[str, Any]]:
    """List the segments of ``backend`` under ``root`` (for ``shmfs ls``).

    Returns:
        One dict per segment, as :meth:`Segment.stats` reports it, by ascending key.

    Raises:
        InvalidArgument: no such backend.
        UnsafeSegment: the root is unsafe.
    """
    cls = backend_class(backend_name(backend))
    return [info.as_dict() for info in cls.list_segments(root)]


def _no_fast_get(index: int) -> Any:
    """``seg.get_fast(index)``: the value at ``index`` read by the backend's lock-free fast path
    in one call, or :data:`shmfs.backends.SLOW`, which says "ask :meth:`Segment.get`".

    For loops that call it millions of times with indices they made themselves (``Cache``'s
    hits): ``get``'s checks cost a tenth of a tmpfs hit. It raises only what decoding the value
    raises (``SerializationError``, as ``get`` would: a value is decoded once per get): SLOW
    stands for every case it does not handle in full (an absent, large, damaged or untrusted
    value, a bad index, a writer mid-write, a detached handle) and for handles without a fast
    path (sysv, redis, pure Python, a ``secret=``), where it is this function and always SLOW.
    """
    return SLOW


def _reattach(spec: dict[str, Any]) -> Segment:
    """Attach what a pickled :class:`Segment` referred to. A signed segment's secret is not in
    the pickle: it comes from ``$SHMFS_SECRET`` here; without it the handle refuses every value
    (``UnsafeSegment``) rather than read or write them unsigned."""
    options = dict(spec)
    if not options.pop("signed", False):
        return attach(**options)
    secret = os.environ.get(SECRET_ENV)
    seg = attach(**options, secret=secret or None)
    if not secret:
        seg._lacks_secret()
    return seg


class Segment(MutableMapping[int, Any]):
    """A handle on one shared segment: variables indexed by int, shared by every process.

    Use :func:`attach` to get one. A ``Segment`` is a ``MutableMapping[int, Any]`` whose
    iteration is in ascending index order. Handles pickle as a reference and attach again in
    the receiving process; after ``fork`` they reopen what they share with the parent.
    """

    # Class-level defaults so detach() and __del__ work after a failed __init__.
    _backend: Backend | None = None
    _destroyed = False
    # The fast path's own bound ``get`` where there is one (see __init__): no Python frame.
    get_fast: Callable[[int], Any] = staticmethod(_no_fast_get)

    def __init__(
        self,
        backend: Backend,
        codec: codecs.Codec,
        secret: bytes | None,
        lock_timeout: float | None,
        spec: dict[str, Any],
    ) -> None:
        self._lock_timeout = lock_timeout
        self._spec = spec
        offers = capabilities(backend)
        self._pin = offers.pin
        # Where single changes are each one atomic step of the backend's (redis: one script
        # call), they take no segment lock here; read-modify-writes become optimistic.
        self._atomic: Atomic | None = offers.atomic
        # The backend's fast get and put of small values (tmpfs's C module). They read
        # unsigned frames only, so a segment with a secret never uses them; the put frames a
        # plain pickle, so only a pickling codec's segment puts through it.
        hot = offers.hot if secret is None else None
        self._hot: Hot | None = hot
        # A batch reply's frames decoded in C (redis): unsigned frames only, as the fast path.
        self._frames = hotpath.frames() if secret is None else None
        if hot is not None:
            self.get_fast = hot.get
        self._hot_codec = codec.id if hot is not None and codec.pickle_dialect else None
        self._coder = Coder(
            codec,
            secret,
            # The backend's native codec is stored bare, so its other users (PHP) can read it.
            framed=not (codec.name == backend.native_codec and secret is None),
            pieces=offers.writes_pieces,
            key=spec["key"],
        )
        self._backend = backend

    # ------------------------------------------------------------------- properties

    @property
    def key(self) -> int:
        """The segment key."""
        return int(self._spec["key"])

    @property
    def backend(self) -> str:
        """The backend's name."""
        return str(self._spec["backend"])

    @property
    def size(self) -> int:
        """The segment's capacity in bytes (the existing segment's, not the one asked for)."""
        return self._open().size

    @property
    def perm(self) -> int:
        """The segment's permission bits."""
        return self._open().perm

    def _say_closed(self, exc: Exception) -> None:
        """Raise the closed handle's error from ``exc`` (raised by a call on this handle) if
        the handle was detached or destroyed meanwhile and ``exc`` is not that error already;
        the caller re-raises ``exc`` if this returns."""
        if self._backend is None:
            closed = self._closed_error()
            if type(exc) is not type(closed):
                raise closed from exc

    def _open(self) -> Backend:
        backend = self._backend
        if backend is None:
            raise self._closed_error()
        return backend

    def _holding(self) -> Holding:
        """The segment lock for one act: ``with self._holding() as backend:``."""
        return Holding(self._open(), self._lock_timeout, self._say_closed)

    def _not_found(self, index: int) -> VariableNotFound:
        key = self._spec["key"]
        return VariableNotFound(
            f"Variable key {index} doesn't exist in segment {key}", key=key, index=index
        )

    def _closed_error(self) -> Exception:
        key = self._spec["key"] if hasattr(self, "_spec") else None
        if self._destroyed:
            return SegmentNotFound(f"segment {key} was destroyed", key=key)
        return SegmentDetached(f"segment {key}: this handle was detached", key=key)

    # ----------------------------------------------------------------- reading

    def get(self, index: int, default: Any = _MISSING) -> Any:
        """Return the value at ``index`` (PHP: ``shm_get_var``).

        Unlike ``dict.get``, a missing index without ``default`` raises, as PHP fails there.

        Raises:
            VariableNotFound: no value at ``index`` and no ``default``.
            InvalidKeyType: ``index`` is not an int.
            InvalidKey: ``index`` is out of range.
            CorruptSegment: the stored bytes fail their checks.
            SerializationError: the codec cannot decode the stored bytes.
            UnsafeSegment: an untrusted user could have written these pickled bytes, or the
                signature does not match ``secret=``.
            SegmentDetached: the handle was detached.
            SegmentNotFound: the segment was destroyed.
        """
        backend = self._backend
        if backend is None:
            raise self._closed_error()
        if type(index) is not int or not _INDEX_MIN <= index <= _INDEX_MAX:
            index = check_index(index)  # the slow path: raises, or accepts an __index__ type
        try:
            hot = self._hot
            if hot is not None:
                # One decode per get: a decoder's failure in C is this get's error.
                value = hot.get(index)
                if value is not SLOW:
                    return value
            data = backend.read(index) if backend.lock_free_reads else self._read_locked(index)
            if data is None:
                if default is _MISSING:
                    raise self._not_found(index)
                return default
            try:
                return self._decode(backend, index, data)
            except CorruptSegment:
                if not backend.lock_free_reads:
                    raise
                # A lock-free copy that fails its checksum may have raced a writer on a CPU
                # that reorders loads; under the lock no writer runs, so a second failure is
                # real damage.
                data = self._read_locked(index)
                if data is None:
                    return self.get(index, default)
                return self._decode(backend, index, data)
        except Exception as exc:  # detached meanwhile (a finalizer, another thread)?
            self._say_closed(exc)
            if isinstance(exc, CorruptSegment):
                raise damage.located(exc, backend, self.key, index) from exc
            raise

    def get_many(self, indexes: Iterable[int]) -> dict[int, Any]:
        """Return the values of those ``indexes`` that hold one, read in one consistent step.

        No write lands in the middle of the batch: tmpfs reads it between two looks at the
        segment's change counter (else under the lock), sysv under one hold of the segment
        lock, redis in one ``HMGET``. Absent indices are left out of the result.

        Args:
            indexes: The indices to read (a repeat comes once in the result).

        Returns:
            ``{index: value}`` for the indices holding a value, in the order asked.

        Raises:
            InvalidArgument: ``indexes`` is not an iterable of indices.
            LockTimeout: the segment lock was not had within ``lock_timeout``.
            The errors of :meth:`get` (an index that fails raises for the whole call).
        """
        hot = self._hot
        if hot is not None and type(indexes) in _SEQUENCES:
            # The whole batch in one C call; anything unusual is SLOW, and Python's way below.
            # Not through _detached_says_so's wrapper (its arguments packed and unpacked cost
            # about a twentieth of a 100-value batch): its handling, inline.
            try:
                found: dict[int, Any] = hot.get_many(indexes)  # type: ignore[arg-type]  # a list or tuple
            except Exception as exc:  # detached meanwhile (a finalizer, another thread)?
                _said_closed(self, exc)
                raise
            if found is not SLOW:
                return found
        return self._get_many(indexes)

    @_detached_says_so
    def _get_many(self, indexes: Iterable[int]) -> dict[int, Any]:
        """:meth:`get_many` the Python way."""
        hot = self._hot
        return batch.get_many(
            self.key,
            self._open(),
            batch.check_indexes(indexes),
            hot=hot,
            decode=self._decode,
            holding=self._holding,
            frames=self._frames,
        )

    def _read_locked(self, index: int) -> bytes | memoryview | frame.Split | None:
        with self._holding() as backend:
            return backend.read(index)

    def _decode(self, backend: Backend, index: int, data: bytes | memoryview | frame.Split) -> Any:
        return self._coder.decode(backend, index, data)

    @contextlib.contextmanager
    def view(self, index: int) -> Iterator[Any]:
        """Read ``index`` without copying it: ``with seg.view(i) as value: ...``.

        On tmpfs a ``bytes`` value (or a ``raw`` one) comes as a read-only ``memoryview`` of
        the shared memory it lies in, and the buffers a value pickles out of band (numpy
        arrays' data, pickle protocol 5) as read-only arrays over it: the cost does not grow
        with the value's size. Other values are decoded as :meth:`get` decodes them. Inside
        the block the viewed bytes stay as they were; writers meanwhile publish new files
        instead of writing in place (slower, never blocked). After the block the views may
        change under you: copy what you keep. On sysv and redis the value is a private copy,
        so ``view`` costs what ``get`` costs.

        Raises:
            The errors of :meth:`get`; ``LockTimeout`` if the lock was not had to pin it.
        """
        backend = self._open()
        index = check_index(index)
        pin = self._pin
        if pin is None:
            value = self.get(index)
            yield memoryview(value).toreadonly() if type(value) is bytes else value
            return
        with self._pinned(backend, pin, index) as viewed:
            yield viewed

    @contextlib.contextmanager
    def _pinned(self, backend: Backend, pin: Pin, index: int) -> Iterator[Any]:
        """``view``'s zero-copy form: the payload of the pinned frame, decoded in place."""
        try:
            pinning = pin(index, self._lock_timeout)
            pinned = pinning.__enter__()
        except Exception as exc:
            self._say_closed(exc)
            raise
        with contextlib.ExitStack() as stack:
            stack.push(pinning)
            try:
                if pinned is None:
                    raise self._not_found(index)
                viewed = self._coder.view(backend, index, pinned)
            except Exception as exc:
                self._say_closed(exc)
                if isinstance(exc, CorruptSegment):
                    raise damage.located(exc, backend, self.key, index) from exc
                raise
            yield viewed

    def _lacks_secret(self) -> None:
        """Refuse every value from now on: the segment is signed and no secret was supplied
        (an unpickled handle without ``$SHMFS_SECRET``). Nothing goes through the fast path,
        which reads and writes unsigned values only."""
        self._coder.lacks_secret(SECRET_ENV)
        self._hot = self._hot_codec = self._frames = None
        self.get_fast = _no_fast_get

    def _encode(self, value: Any, index: int | None = None) -> bytes | frame.Pieces:
        """``value`` framed for ``index`` (which a signature covers: required with a secret)."""
        return self._coder.encode(value, index)

    @_detached_says_so
    def has(self, index: int) -> bool:
        """Whether ``index`` holds a value (PHP: ``shm_has_var``).

        Raises:
            InvalidKeyType: ``index`` is not an int.
            InvalidKey: ``index`` is out of range.
            SegmentDetached: the handle was detached.
            SegmentNotFound: the segment was destroyed.
        """
        backend = self._open()
        index = check_index(index)
        try:
            data = backend.read(index) if backend.lock_free_reads else self._read_locked(index)
        except CorruptSegment as exc:
            if getattr(exc, "index", None) == index:
                return True  # the backend found this variable's own bytes damaged: it is there
            raise damage.located(exc, backend, self.key, index) from exc
        return data is not None

    # ----------------------------------------------------------------- writing

    def put(self, index: int, value: Any) -> None:
        """Store ``value`` at ``index``, replacing any old value (PHP: ``shm_put_var``).

        The value is encoded before anything is touched; if it cannot be stored the old value
        stays (PHP 8.2 loses it).

        Raises:
            InvalidKeyType: ``index`` is not an int.
            InvalidKey: ``index`` is out of range.
            SerializationError: the codec cannot encode ``value``.
            SegmentFull: the value does not fit in ``size``, or the filesystem is full.
            LockTimeout: the segment lock was not had within ``lock_timeout``.
            UnsafeSegment: no permission to write.
            SegmentDetached: the handle was detached.
            SegmentNotFound: the segment was destroyed.
        """
        backend = self._backend
        if backend is None:
            raise self._closed_error()
        if type(index) is not int or not _INDEX_MIN <= index <= _INDEX_MAX:
            index = check_index(index)
        try:
            if (
                self._hot_codec is not None and self._hot.put(index, self._hot_codec, value) is None  # type: ignore[union-attr]  # set together with _hot_codec
            ):
                return
            data = self._encode(value, index)
            atomic = self._atomic
            if atomic is not None:
                atomic.commit(index, data, ("any", None), self._lock_timeout)  # type: ignore[arg-type]  # bytes: an atomic backend takes no pieces
                return
            with self._holding() as held:
                held.write(index, data)
        except Exception as exc:  # detached meanwhile (a finalizer, another thread)?
            self._say_closed(exc)
            if isinstance(exc, CorruptSegment):
                raise damage.located(exc, backend, self.key, index) from exc
            raise

    @_detached_says_so
    def put_many(self, mapping: Mapping[int, Any] | Iterable[tuple[int, Any]]) -> None:
        """Store every value of ``mapping`` (``{index: value}``, or pairs), all or none.

        Every index is checked and every value encoded before anything is touched. Then the
        batch is written under one hold of the segment lock (redis: in one script call), and
        readers see all of it or none of it. If one value cannot be stored (it does not
        encode, the segment has no room for the whole batch, an I/O error) no value is, and
        the segment is as it was. A writer killed with SIGKILL mid-batch leaves every old value
        or every new one on tmpfs, except as docs/api.md's "Batches" says; on sysv, each
        variable old or new.

        Raises:
            InvalidArgument: ``mapping`` is neither a mapping nor an iterable of pairs.
            SegmentFull: the batch does not fit (``needed``: the whole batch's bytes).
            The errors of :meth:`put`.
        """
        backend = self._open()  # a closed handle's error before a bad index's
        batch.put_many(
            self.key,
            backend,
            batch.check_items(mapping),
            encode=self._encode,
            atomic=self._atomic,
            holding=self._holding,
            timeout=self._lock_timeout,
        )

    def fast_put(self) -> tuple[Callable[..., Any], int] | None:
        """The backend's fast put and the codec id it takes, for a caller in C that stores
        millions of values in shapes it knows (``Cache``'s set): ``put(index, codec_id, value,
        head_at, head, or_absent)`` is :meth:`put_if_head` without its checks of the handle and
        the index, answering ``None`` once stored and :data:`shmfs.backends.SLOW` having
        changed nothing (then :meth:`put_if_head` or :meth:`put` says why, or does it).

        Returns:
            The pair, or ``None`` where :meth:`put_if_head` always answers ``False`` (sysv,
            redis, pure Python, a ``secret=``, a codec that does not pickle, a closed handle).
        """
        hot, codec = self._hot, self._hot_codec
        if hot is None or codec is None or self._backend is None:
            return None
        return hot.put, codec

    @_detached_says_so
    def put_if_head(
        self, index: int, value: Any, head_at: int, head: bytes, *, or_absent: bool = False
    ) -> bool:
        """Store ``value`` at ``index`` in one lock-free fast call, if the value stored there
        now pickles with the bytes ``head`` at offset ``head_at``, as ``value`` does.

        For a caller that keeps values of one known shape at an index (``Cache`` keeps
        ``(key, value, expires, written)`` tuples, whose pickles start alike for one key):
        comparing the stored pickle's head replaces decoding it under the lock. The store is
        as atomic as :meth:`put`'s. ``False`` says only that nothing was stored: the head
        differs, the index is empty (unless ``or_absent``), the value is not a small plain one,
        a lock is held, or this handle has no fast path (sysv, redis, pure Python, a
        ``secret=``, a codec that does not pickle); the caller then takes its general path.

        Args:
            index: The variable.
            value: The new value.
            head_at: Where ``head`` lies in the stored value's pickle (protocol 5).
            head: The bytes the stored pickle must have there.
            or_absent: Also store it if ``index`` holds no value (a first ``set`` of a key).

        Returns:
            Whether ``value`` was stored.

        Raises:
            InvalidKeyType: ``index`` is not an int.
            InvalidKey: ``index`` is out of range.
            SegmentDetached: the handle was detached.
            SegmentNotFound: the segment was destroyed.
        """
        if self._backend is None:
            raise self._closed_error()
        if type(index) is not int or not _INDEX_MIN <= index <= _INDEX_MAX:
            index = check_index(index)
        if self._hot_codec is None:
            return False
        put = self._hot.put  # type: ignore[union-attr]  # set together with _hot_codec
        return put(index, self._hot_codec, value, head_at, head, or_absent) is None

    @_detached_says_so
    def remove(self, index: int) -> None:
        """Remove ``index``, zeroing its bytes (PHP: ``shm_remove_var``).

        Raises:
            VariableNotFound: ``index`` holds no value.
            InvalidKeyType: ``index`` is not an int.
            InvalidKey: ``index`` is out of range.
            LockTimeout: the segment lock was not had within ``lock_timeout``.
            SegmentDetached: the handle was detached.
            SegmentNotFound: the segment was destroyed.
        """
        self._open()  # a closed handle's error before a bad index's
        index = check_index(index)
        atomic = self._atomic
        if atomic is not None:
            found = atomic.discard(index, self._lock_timeout)
        else:
            with self._holding() as backend:
                found = backend.delete(index)
        if not found:
            raise self._not_found(index)

    # ---------------------------------------------------------------- atomic ops

    def lock(self, timeout: float | None = None) -> Locked:
        """Hold the segment's cross-process lock: ``with seg.lock(): ...``.

        Calls on this handle from the same thread inside the block do not deadlock. A holder
        that dies frees the lock at once.

        Args:
            timeout: Seconds to wait; ``None`` uses the handle's ``lock_timeout``.

        Raises:
            LockTimeout: not had in time (on entering the block).
            SegmentDetached: the handle was detached.
        """
        timeout = self._lock_timeout if timeout is None else timeout
        return Locked(self._open(), timeout, self._say_closed)

    @_detached_says_so
    def add(self, index: int, value: Any) -> bool:
        """Store ``value`` only if ``index`` is empty, atomically; return whether it did.

        Raises:
            The errors of :meth:`put`.
        """
        self._open()  # a closed handle's error before a bad index's
        index = check_index(index)
        data = self._encode(value, index)
        atomic = self._atomic
        if atomic is not None:
            return atomic.commit(index, data, ("absent", None), self._lock_timeout).done  # type: ignore[arg-type]  # bytes: an atomic backend takes no pieces
        with self._holding() as backend:
            if backend.read(index) is not None:
                return False
            backend.write(index, data)
            return True

    # The README makes update(i, fn) a read-modify-write; update(mapping) still works as dict's.
    @_detached_says_so
    def update(self, index: Any, fn: Any = _MISSING, /, default: Any = _MISSING) -> Any:
        """Replace the value at ``index`` with ``fn(old)`` under the lock; return the new value.

        ``seg.update(mapping)`` (one argument) stores every item, as ``dict.update`` does. On
        redis no lock is taken: the new value is stored only if no other write came between,
        else ``fn`` runs again on the newer value, so ``fn`` should have no side effects.

        Args:
            index: The variable, or a mapping/iterable of pairs to store.
            fn: Computes the new value from the old one.
            default: The old value to use when ``index`` is empty.

        Raises:
            VariableNotFound: ``index`` is empty and no ``default`` was given.
            The errors of :meth:`get` and :meth:`put`.
        """
        if fn is _MISSING:
            pairs = index.items() if isinstance(index, Mapping) else index
            with self.lock():
                for key, value in pairs:
                    self.put(key, value)
            return None
        return self._modify(index, lambda old: (True, fn(self._present(index, old))), default)

    def incr(self, index: int, delta: Any = 1, default: Any = 0) -> Any:
        """Add ``delta`` to the value at ``index`` (``default`` if empty), atomically.

        Returns:
            The new value.

        Raises:
            The errors of :meth:`get` and :meth:`put`.
        """
        atomic = self._atomic
        if atomic is not None and type(delta) is int and type(default) is int:
            return self._incr_atomic(atomic, index, delta, default)
        return self._modify(index, lambda old: (True, self._present(index, old) + delta), default)

    @_detached_says_so
    def _incr_atomic(self, atomic: Atomic, index: int, delta: int, default: int) -> Any:
        """``incr`` of an int where single changes are atomic: the backend adds on its side
        when it can (redis: one script call, no read), else the optimistic path from the state
        it found."""
        backend = self._open()  # a closed handle's error before a bad index's
        index = check_index(index)
        codec = self._coder.unsigned_codec()
        done = None
        if codec is not None:
            done = atomic.add_int(
                index,
                delta,
                default,
                codec=codec,
                pickles=backend.trusted(index),
                timeout=self._lock_timeout,
            )
        if isinstance(done, int):
            return done
        return self._modify_optimistic(
            atomic, backend, index, lambda old: (True, old + delta), default, known=done
        )

    def cas(self, index: int, expected: Any, new: Any) -> bool:
        """Store ``new`` if the value at ``index`` equals ``expected``, atomically.

        An empty index never matches. Returns whether ``new`` was stored.

        Raises:
            The errors of :meth:`get` and :meth:`put`.
        """
        swapped = False

        def swap(old: Any) -> tuple[bool, Any]:
            nonlocal swapped
            swapped = old is not _MISSING and bool(old == expected)
            return swapped, new

        atomic = self._atomic
        if atomic is not None and optimistic.bytes_decide(expected):
            backend = self._open()
            index = check_index(index)
            expect = None
            if atomic.seen(index) is None:
                with contextlib.suppress(SerializationError):  # this codec cannot: compare values
                    expect = ("bytes", self._encode(expected, index))
            if expect is not None:
                # One round trip: the backend swaps if it holds exactly what ``expected``
                # encodes to, and else answers with what it holds, compared here as values.
                done = atomic.commit(index, self._encode(new, index), expect, self._lock_timeout)  # type: ignore[arg-type]  # bytes: an atomic backend takes no pieces
                if done.done:
                    return True
                if done.current is None or not swap(self._decode(backend, index, done.current))[0]:
                    return False
        self._modify(index, swap, _MISSING)
        return swapped

    def _present(self, index: int, old: Any) -> Any:
        """``old`` unless it is the absent marker, which becomes ``VariableNotFound``."""
        if old is _MISSING:
            raise self._not_found(index)
        return old

    @_detached_says_so
    def _modify(self, index: int, change: Callable[[Any], tuple[bool, Any]], default: Any) -> Any:
        """Read, ``change``, write back, all under the lock; ``change`` sees ``_MISSING`` for
        an empty index without a ``default``."""
        backend = self._open()  # a closed handle's error before a bad index's
        index = check_index(index)
        if self._atomic is not None:
            return self._modify_optimistic(self._atomic, backend, index, change, default)
        with self._holding() as backend:
            old = self.get(index, _ABSENT)
            write, new = change(default if old is _ABSENT else old)
            if write:
                self._write_held(backend, index, new)
            return new

    def _modify_optimistic(
        self,
        atomic: Atomic,
        backend: Backend,
        index: int,
        change: Callable[[Any], tuple[bool, Any]],
        default: Any,
        *,
        known: tuple[object, bytes | None] | None = None,
    ) -> Any:
        """``_modify`` without the lock (``shmfs.optimistic``); ``known``: the state of
        ``index`` the caller just read."""
        return optimistic.modify(
            atomic,
            index,
            change,
            default,
            decode=lambda data: self._decode(backend, index, data),
            encode=lambda value: self._encode(value, index),
            lock_timeout=self._lock_timeout,
            key=self.key,
            known=known,
        )

    def _write_held(self, backend: Backend, index: int, value: Any) -> None:
        """Store ``value`` with the lock held: the fast path's put where it takes the value (it
        writes under the lock this thread holds), else the backend's write."""
        hot = self._hot
        if (
            self._hot_codec is None
            or hot is None
            or hot.put(index, self._hot_codec, value) is not None
        ):
            backend.write(index, self._encode(value, index))

    # ------------------------------------------------------------- mapping protocol

    def __getitem__(self, index: int) -> Any:
        return self.get(index)

    def __setitem__(self, index: int, value: Any) -> None:
        self.put(index, value)

    def __delitem__(self, index: int) -> None:
        self.remove(index)

    def __contains__(self, index: object) -> bool:
        return self.has(index)  # type: ignore[arg-type]  # has() refuses non-ints clearly

    @_detached_says_so
    def __len__(self) -> int:
        return self._open().count()

    @_detached_says_so
    def __iter__(self) -> Iterator[int]:
        return iter(self._open().indices())

    @_detached_says_so
    def clear(self) -> None:
        """Remove every variable, atomically with respect to other writers."""
        atomic = self._atomic
        if atomic is not None:
            self._open()
            atomic.clear(self._lock_timeout)
            return
        with self._holding() as backend:
            for index in backend.indices():
                backend.delete(index)

    # ----------------------------------------------------------------- waiting

    @_detached_says_so
    def wait(self, index: int, timeout: float | None = None) -> Any:
        """Block until ``index`` is written again, and return the new value.

        Sleeps without polling; wakes within about a millisecond of a write in any process.

        Args:
            index: The variable to wait on.
            timeout: Seconds to wait at most; ``None`` waits for ever.

        Raises:
            WaitTimeout: no new value within ``timeout``.
            InvalidKeyType: ``index`` is not an int.
            InvalidKey: ``index`` is out of range.
            SegmentDetached: the handle was detached.
            SegmentNotFound: the segment was destroyed.
        """
        watched = Watched(self._open(), self._say_closed)
        return waiting.wait_next(watched, self.get, check_index(index), timeout)

    @_detached_says_so
    def watch(self, index: int, timeout: float | None = None) -> waiting.Watch:
        """Yield each new value of ``index`` as it is written (the progress-bar case).

        Watching starts when ``watch()`` returns, so a value written before the first ``next()``
        is not missed. A reader slower than the writer gets the newest value, not every one in
        between. Close the iterator (or use it in ``with``) to stop watching.

        Args:
            index: The variable to watch.
            timeout: Seconds to wait at most for each new value; ``None`` waits for ever.

        Raises:
            WaitTimeout: no new value within ``timeout``.
            The errors of :meth:`wait`.
        """
        watched = Watched(self._open(), self._say_closed)
        return waiting.Watch(watched, self.get, check_index(index), timeout)

    async def wait_async(self, index: int, timeout: float | None = None) -> Any:
        """:meth:`wait` for asyncio: the event loop watches a descriptor, no thread is used.

        Raises:
            The errors of :meth:`wait`.
        """
        watched = Watched(self._open(), self._say_closed)
        return await waiting.wait_async(watched, self.get, check_index(index), timeout)

    def watch_async(self, index: int, timeout: float | None = None) -> waiting.AsyncWatch:
        """:meth:`watch` for asyncio: ``async for value in seg.watch_async(i): ...``.

        Raises:
            The errors of :meth:`watch`.
        """
        watched = Watched(self._open(), self._say_closed)
        return waiting.AsyncWatch(watched, self.get, check_index(index), timeout)

    # --------------------------------------------------------------- lifecycle

    @_detached_says_so
    def stats(self) -> dict[str, Any]:
        """Report key, backend, size, used, free, variables, perm, owner and location.

        Raises:
            SegmentDetached: the handle was detached.
            SegmentNotFound: the segment was destroyed.
        """
        return self._open().info().as_dict()

    def detach(self) -> None:
        """Close this handle; the segment and its data stay (PHP: ``shm_detach``). Idempotent."""
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()

    @_detached_says_so
    def destroy(self) -> None:
        """Wipe and remove the segment for every process (PHP: ``shm_remove``).

        Other handles on it raise ``SegmentNotFound`` from then on; attaching the key again
        creates a fresh, empty segment.

        Raises:
            LockTimeout: the segment lock was not had within ``lock_timeout``.
            SegmentDetached: the handle was detached.
            SegmentNotFound: the segment was already destroyed.
        """
        atomic = self._atomic
        if atomic is not None:
            self._open()
            atomic.destroy(self._lock_timeout)
        else:
            with self._holding() as backend:
                backend.destroy()
        self._destroyed = True
        self.detach()

    def __enter__(self) -> Segment:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.detach()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # a finalizer must never raise
            self.detach()

    def __reduce__(self) -> tuple[Callable[[dict[str, Any]], Segment], tuple[dict[str, Any]]]:
        return _reattach, (self._spec,)

    def __repr__(self) -> str:
        state = "open" if self._backend is not None else "closed"
        return f"<shmfs.Segment key={self._spec['key']} backend={self.backend} {state}>"
