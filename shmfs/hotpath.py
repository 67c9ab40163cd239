"""The C get and put of small tmpfs values (``shmfs._hot``), when the build made it.

A tmpfs get in Python is a dozen interpreter-level steps and costs about 1.5 us, against 0.6 us
for lmdb's one C call; a put pays about as much again around its flock. ``shmfs/_hot_c/`` does
the common case of each in one call, following the protocols of ``backends/tmpfs/`` store for
store, and answers :data:`SLOW` for anything else: the Python
path then does the work as it always has, and reports any error. So C and Python readers and
writers mix freely, and the package works without the module, only slower: pip builds it when a
C compiler and the headers of Python and zlib are there, and skips it, with a warning, when not.

The sysv backend's common locked get and put have their C call too (:func:`new_sysv_hot`,
``shmfs/_hot_c/sysv.c``), on the same terms: SLOW for anything else.

Batch reads have their C call too: ``get_many`` of either fast path, and :func:`frames` for
a batch of frames that came in one redis reply.

The module also maps variable files without keeping a descriptor (:func:`map_file`), which
``mmap.mmap`` does only from Python 3.13: so a handle may keep as many mappings on 3.11 and 3.12.

:class:`Hot`, the fast path's Protocol, and :data:`SLOW`, its "do it the Python way" answer, are
the Backend Protocol's (``shmfs.backends``), where any backend's fast path is declared; they are
named here too for the tmpfs code and the tests that use them with this module.

``SHMFS_PURE_PYTHON=1`` in the environment turns the module off for the process (to rule it
out when chasing a problem), and handles attached inside ``with shmfs.hotpath.pure_python():``
do without it (to compare the two in one process); :func:`available` says whether it is in use.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import mmap
import os
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, Final, Protocol, cast

from shmfs import codecs, frame
from shmfs.backends import SLOW, Hot

__all__ = [
    "SLOW",
    "CacheHits",
    "CacheSets",
    "Frames",
    "Hot",
    "TmpfsHot",
    "available",
    "cache_hits",
    "cache_sets",
    "frames",
    "key_slots",
    "map_file",
    "maps_without_descriptors",
    "new_hot",
    "new_sysv_hot",
    "pure_python",
    "rehash",
    "resp_hmget",
    "resp_many",
    "tuple_head",
    "why_unavailable",
]


class TmpfsHot(Hot, Protocol):
    """The tmpfs fast path: :class:`~shmfs.backends.Hot`, told which index the handle maps."""

    def index(self, words: memoryview, gen: int) -> None:
        """The index the handle maps now, and its generation."""


# Why the module is not in use, for ``shmfs --version`` and ``shmfs doctor``: pip shows the
# build's warning only with -v, so a silent pure-Python install must be explainable afterwards.
_WHY_NOT: str | None = None
try:
    if os.environ.get("SHMFS_PURE_PYTHON"):
        raise ImportError("SHMFS_PURE_PYTHON is set")
    from shmfs import _hot  # type: ignore[attr-defined]  # a C module, built when possible
except ImportError as exc:
    _hot = None
    if os.environ.get("SHMFS_PURE_PYTHON"):
        _WHY_NOT = "SHMFS_PURE_PYTHON is set in the environment"
    elif importlib.util.find_spec("shmfs._hot") is None:
        _WHY_NOT = (
            "shmfs._hot was not built when shmfs was installed (it needs a C compiler and the "
            "headers of Python and zlib: apt-get install -y gcc python3-dev zlib1g-dev, then "
            "reinstall)"
        )
    else:
        _WHY_NOT = f"shmfs._hot could not be loaded: {exc}"

# Chosen once, at import, and not by pure_python(): how many mappings a handle may keep is fixed
# at import too (backends/tmpfs/largevars.py), and must not outgrow the descriptors they use.
_Mapping = _hot.Mapping if _hot is not None and sys.version_info < (3, 13) else None

_FIRST_WORD: Final = frame.first_word(0)
# The codecs the C get decodes itself: every codec, called as Python would call it, and the
# error a get raises when one fails (the C get raises it: a value is decoded once per get).
_DECODERS: Final = {
    codec.id: (codec.decode, codec.executes_code, functools.partial(codecs.decode_error, codec))
    for codec in codecs.CODECS.values()
}


def available() -> bool:
    """Whether the C fast path is in use (built, and not turned off by SHMFS_PURE_PYTHON)."""
    return _hot is not None


def why_unavailable() -> str | None:
    """Why the C fast path is not in use (``None`` when it is): not built, not loadable,
    turned off by ``SHMFS_PURE_PYTHON``, or inside :func:`pure_python`."""
    if _hot is not None:
        return None
    return _WHY_NOT or "turned off in this process (shmfs.hotpath.pure_python)"


def maps_without_descriptors() -> bool:
    """Whether :func:`map_file`'s mappings keep no file descriptor (Python 3.13's mmap, or the
    C module's), so that the number of mappings is bounded by memory maps alone."""
    return _Mapping is not None or sys.version_info >= (3, 13)


def map_file(fd: int, size: int, *, writable: bool) -> mmap.mmap:
    """Map ``size`` bytes of the open file ``fd``, shared; the caller may close ``fd`` at once.

    Before Python 3.13, where ``mmap.mmap`` keeps a duplicate of ``fd``, the C module's
    ``Mapping`` when it is built: the part of ``mmap.mmap`` that variable files use (slices
    copied out as bytes, slice assignment, the buffer protocol, ``close``), without one.

    Raises:
        OSError: from ``mmap(2)``.
    """
    if _Mapping is not None:
        return cast(mmap.mmap, _Mapping(fd, size, writable))  # the subset largefile.py uses
    access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
    if sys.version_info >= (3, 13):
        return mmap.mmap(fd, size, access=access, trackfd=False)
    return mmap.mmap(fd, size, access=access)


def rehash(source: memoryview, target: memoryview) -> int | None:
    """Copy an index's live entries into an empty bigger one in C (``backends/tmpfs/index.py``
    says how); ``None`` without the module, for the Python loop to do it."""
    if _hot is None:
        return None
    copied: int = _hot.rehash(source, target)
    return copied


def key_slots() -> Callable[[Callable[[Any], tuple[str, int]], int], Any] | None:
    """The C module's ``KeySlots(fallback, limit)``, the twin of ``shmfs.cache.keys.SlotMemo``;
    ``None`` without the module, or inside :func:`pure_python`."""
    if _hot is None:
        return None
    maker: Callable[[Callable[[Any], tuple[str, int]], int], Any] = _hot.KeySlots
    return maker


class CacheHits(Protocol):
    """A Cache's get of a live entry in one C call (``shmfs/_hot_c/cachehits.c``)."""

    def hit(self, key: Any) -> Any:
        """The value of ``key``'s live entry, noted as a hit exactly as ``Cache.get`` notes
        one; :data:`SLOW` for anything else, having changed nothing."""

    def get(self, key: Any, default: Any = None) -> Any:
        """``Cache.get``: :meth:`hit`, and the Python get (``slow_get``) for anything else."""


def cache_hits(
    slots: object,
    read: Callable[[int], Any],
    *,
    entry: ModuleType,
    recency: object,
    counts: list[int],
    pending: dict[int, float],
    mask: int,
    slow_get: Callable[[Any, Any], Any],
) -> CacheHits | None:
    """A Cache's :class:`CacheHits`, or ``None`` without the module, or when ``slots`` is not
    the module's own ``KeySlots`` (see :func:`key_slots`)."""
    if _hot is None or not isinstance(slots, _hot.KeySlots):
        return None
    hits: CacheHits = _hot.CacheHits(slots, read, entry, recency, counts, pending, mask, slow_get)
    return hits


class CacheSets(Protocol):
    """A Cache's set over its own entry in one C call (``shmfs/_hot_c/cacheset.c``)."""

    def store(self, key: Any, value: Any) -> Any:
        """Set ``key`` to ``value`` with the cache's ttl as ``Writes._set_in_place`` does, LRU
        note included, and answer ``None``; :data:`SLOW` for anything else, having stored
        nothing."""

    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        """``Cache.set``: :meth:`store`, and the Python set (``slow_set``) for anything else."""


def cache_sets(
    slots: object,
    put: tuple[Callable[..., Any], int] | None,
    *,
    cache: object,
    entry: ModuleType,
    recency: object,
    pending: dict[int, float],
    mask: int,
    slow_set: Callable[..., None],
) -> CacheSets | None:
    """A Cache's :class:`CacheSets` over ``put`` (``Segment.fast_put``), or ``None`` without
    the module, without a fast put, or when ``slots`` is not the module's ``KeySlots``."""
    if _hot is None or put is None or not isinstance(slots, _hot.KeySlots):
        return None
    sets: CacheSets = _hot.CacheSets(
        slots, put[0], put[1], cache, entry, recency, pending, mask, slow_set
    )
    return sets


def tuple_head(text: str) -> bytes | None:
    """``pickling.tuple_head(text)`` as the C set makes it (``None``: it leaves ``text`` to
    Python); ``None`` without the module. For the tests that hold the two equal."""
    if _hot is None:
        return None
    head: bytes | None = _hot.tuple_head(text)
    return head


@contextlib.contextmanager
def pure_python() -> Iterator[None]:
    """Handles attached inside the block do without the C fast path (in this thread and every
    other, while the block lasts): for comparing the two paths in one process."""
    global _hot  # noqa: PLW0603  # the module-wide switch is the point
    saved, _hot = _hot, None
    try:
        yield
    finally:
        _hot = saved


class Frames(Protocol):
    """A batch of frames from one reply checked and decoded in C (``shmfs._hot.Frames``)."""

    def decode(self, indexes: list[int], reply: bytes, trusted: bool) -> Any:
        """``{index: value}`` of the frames packed in ``reply`` as the redis backend's
        ``READ_MANY`` packs them (see ``backends/redis/packed.py``), checked as a get checks a
        frame (a pickling codec's only if ``trusted``); :data:`SLOW`, having decoded nothing,
        for anything else: a malformed reply, a signed or damaged frame, a bare value."""


_FRAMES: Final[Frames | None] = _hot.Frames(_DECODERS, _FIRST_WORD) if _hot is not None else None


def frames() -> Frames | None:
    """The C module's :class:`Frames`, or ``None`` without it (or inside :func:`pure_python`)."""
    return _FRAMES if _hot is not None else None


def resp_many() -> Callable[[Any, int, int, tuple[int, int]], Any] | None:
    """The C module's ``resp_many`` (an HMGET's raw reply scanned, ``shmfs/_hot_c/resp.c``),
    or ``None`` without it (or inside :func:`pure_python`)."""
    return _hot.resp_many if _hot is not None else None


def resp_hmget() -> Callable[[bytes, list[int]], bytes | None] | None:
    """The C module's ``resp_hmget`` (an ``HMGET`` packed, ``shmfs/_hot_c/resp.c``), or
    ``None`` without it (or inside :func:`pure_python`)."""
    return _hot.resp_hmget if _hot is not None else None


def new_hot(vars_: dict[int, Any], slabs: dict[int, Any], meta: memoryview) -> TmpfsHot | None:
    """A fast path over a tmpfs handle's mappings and metadata, or ``None`` without the module.

    ``vars_`` (large variables' files) and ``slabs`` (slab files) must stay the handle's own
    dicts for its whole life (cleared, never replaced), and every value in them must have a
    ``hot`` attribute: ``(words, capacity, trusted, writable)`` for a large variable's file,
    ``(words, slot_size, slots, trusted, writable)`` for a slab file.
    """
    if _hot is None:
        return None
    hot: TmpfsHot = _hot.Hot(vars_, slabs, meta, _DECODERS, _FIRST_WORD)
    return hot


def new_sysv_hot(
    view: memoryview,
    *,
    semid: int,
    journal: int,
    seed: int,
    trusted: bool,
    state: tuple[dict[int, tuple[int, int]], list[tuple[int, int]], bytearray],
    stored: Any,
    native: Any,
) -> Hot | None:
    """The sysv fast path over a segment's bytes, or ``None`` without the module.

    ``view`` is the whole segment (it stays exported until ``close()``), ``semid`` PHP's
    semaphore set, ``journal`` the journal's first byte (-1: none), ``seed`` the stamps' key,
    ``state`` and ``stored`` the chain index's (``ChainIndex.hot_state`` and ``stored``), and
    ``native`` the decoder of bare (PHP) values. Every call is SLOW until ``reset(lock, 0, 0)``
    names the segment lock.
    """
    if _hot is None:
        return None
    hot: Hot = _hot.SysvHot(
        view, semid, journal, seed, trusted, state, stored, _DECODERS, native, _FIRST_WORD
    )
    return hot
