"""Files another user could truncate are never mapped: they are read and written with
``pread``/``pwrite`` through stand-ins for a mapping and its word view.

Why. A page of a mapping past the end of its file raises SIGBUS on access, which kills the
process (docs/linux-behaviour.md, part a). Whoever can write a file can ``ftruncate`` it, at any
instant, so no check made before mapping (size, owner, mode) holds afterwards: the only defence
is not to map. A file is mapped only when this process's user owns it and neither its group nor
others may write it (:func:`mappable`); then only that user, and root, can shrink it. Every
other file (a segment made with ``perm=0o666`` or ``0o660``, or one another user owns) goes
through :class:`FileBytes`, whose reads of bytes that are no longer there are a
``CorruptSegment``, never a signal.

The stand-ins do what the tmpfs modules do with ``mmap`` objects and their ``cast("Q")``
views: word reads and stores, slices copied out, slice assignment. Each word is one aligned
8-byte ``pread`` or ``pwrite``; the kernel copies it with wide moves but does not promise a
single one, and the formats do not rest on it (a torn control or sequence word fails its check,
``largefile.py``). The C fast path reads mappings only: handles give it none of these files
(their ``hot`` is ``None``), so it sends those reads to Python.

A file is also refused when it holds fewer bytes than it says (``check_allocated``): every file
of a segment is allocated whole with ``posix_fallocate``, so a sparse one, which costs its maker
a page and would make a reader allocate and copy gigabytes of zeros, is damage.
"""

from __future__ import annotations

import mmap
import os
import stat
import threading
from typing import Any, Final, cast

from shmfs.errors import CorruptSegment
from shmfs.hotpath import map_file

__all__ = ["FileBytes", "FileWords", "check_allocated", "is_unmapped", "mappable", "open_words"]

_WORD: Final = 8
# A read longer than this stats the file first: what it allocates must be bytes the file holds.
_STAT_ABOVE: Final = 64 * 1024


def mappable(st: os.stat_result) -> bool:
    """Whether a file with this ``stat`` may be mapped: only this user (and root) can shrink it."""
    return st.st_uid == os.geteuid() and not stat.S_IMODE(st.st_mode) & 0o022


def check_allocated(st: os.stat_result, what: str) -> None:
    """Refuse a file whose blocks hold fewer bytes than its size (a sparse file).

    Raises:
        CorruptSegment: it is sparse.
    """
    if st.st_blocks * 512 < st.st_size:
        raise CorruptSegment(
            f"{what} is {st.st_size} bytes but holds only {st.st_blocks * 512} (a sparse file,"
            " which shmfs never writes); refusing to read it"
        )


class FileBytes:
    """A file read and written with ``pread``/``pwrite``, in the shape of the ``mmap`` objects
    the tmpfs modules use: ``len``, slices copied out, slice assignment, ``close``.

    It keeps a descriptor of its own (closed when the last reference goes, so a thread still
    reading never reads another file that took the number); after :meth:`close` every use
    raises ``ValueError``, as a closed mapping does.
    """

    __slots__ = ("_closed", "_fd", "name", "size", "words")

    #: How many are open in this process, every handle's: each holds a descriptor, which
    #: ``largevars.py`` keeps under a budget.
    live = 0
    _counting = threading.Lock()

    def __init__(self, fd: int, size: int, name: str) -> None:
        self.name = name
        self._fd = os.dup(fd)
        with FileBytes._counting:
            FileBytes.live += 1
        self._closed = False
        self.size = size
        self.words = FileWords(self)

    def __len__(self) -> int:
        return self.size

    def _span(self, span: slice) -> tuple[int, int]:
        if self._closed:
            raise ValueError("mmap closed or invalid")
        start, stop, step = span.indices(self.size)
        if step != 1:
            raise ValueError("a file read with pread has no strided slices")
        return start, max(stop - start, 0)

    def __getitem__(self, span: slice) -> bytes:
        start, length = self._span(span)
        return self.read(start, length)

    def read(self, start: int, length: int) -> bytes:
        """``length`` bytes at ``start``.

        Raises:
            CorruptSegment: the file no longer holds them (shrunk, or made sparse).
        """
        if length > _STAT_ABOVE:
            st = os.fstat(self._fd)
            if st.st_size < start + length:
                raise self._shrunk(start, length, st.st_size)
            check_allocated(st, self.name)
        data = os.pread(self._fd, length, start)
        if len(data) != length:
            raise self._shrunk(start, length, start + len(data))
        return data

    def readinto(self, target: memoryview, start: int) -> None:
        """Fill ``target`` with the bytes at ``start`` (``read``, without the extra copy)."""
        if self._closed:
            raise ValueError("mmap closed or invalid")
        length = len(target)
        st = os.fstat(self._fd)
        if st.st_size < start + length:
            raise self._shrunk(start, length, st.st_size)
        check_allocated(st, self.name)
        done = os.preadv(self._fd, [target], start)
        if done != length:
            raise self._shrunk(start, length, start + done)

    def __setitem__(self, span: slice, data: Any) -> None:
        start, length = self._span(span)
        view = memoryview(data).cast("B")
        if len(view) != length:
            raise IndexError("slice assignment of the wrong length")
        at = start
        while view:
            written = os.pwrite(self._fd, view, at)
            if written <= 0:
                raise OSError(28, "short write to a file of the segment")
            view, at = view[written:], at + written

    def _shrunk(self, start: int, length: int, end: int) -> CorruptSegment:
        return CorruptSegment(
            f"{self.name} was cut short under this reader: it ends at {end}, "
            f"the {length} bytes at offset {start} are gone"
        )

    def close(self) -> None:
        """Refuse every later use; the descriptor goes with the last reference."""
        self._closed = True

    def __del__(self) -> None:
        fd, self._fd = getattr(self, "_fd", -1), -1
        if fd >= 0:
            os.close(fd)
            with FileBytes._counting:
                FileBytes.live -= 1


class FileWords:
    """The 8-byte words of a :class:`FileBytes`, in the shape of ``memoryview.cast("Q")``:
    word reads and stores, and slices (copied out, as a read-only ``memoryview`` of words)."""

    __slots__ = ("_file",)

    def __init__(self, file: FileBytes) -> None:
        self._file = file

    def __len__(self) -> int:
        return self._file.size // _WORD

    def __getitem__(self, item: int | slice) -> Any:
        file = self._file
        if isinstance(item, slice):
            start, stop, _ = item.indices(len(self))
            return memoryview(file[start * _WORD : max(stop, start) * _WORD]).cast("Q")
        if file._closed:
            raise ValueError("mmap closed or invalid")
        if not 0 <= item < len(self):
            raise IndexError("word out of range")
        raw = os.pread(file._fd, _WORD, item * _WORD)
        if len(raw) != _WORD:
            raise file._shrunk(item * _WORD, _WORD, item * _WORD + len(raw))
        return int.from_bytes(raw, "little")

    def __setitem__(self, item: int, value: int) -> None:
        file = self._file
        if file._closed:
            raise ValueError("mmap closed or invalid")
        if not 0 <= item < len(self):
            raise IndexError("word out of range")
        if os.pwrite(file._fd, value.to_bytes(_WORD, "little"), item * _WORD) != _WORD:
            raise OSError(28, "short write of a word to a file of the segment")

    def release(self) -> None:
        """Nothing to release: ``memoryview.release``'s place in ``close`` paths."""


def open_words(
    fd: int, st: os.stat_result, size: int, *, writable: bool, name: str
) -> tuple[mmap.mmap, memoryview]:
    """``(mapping, words)`` over the first ``size`` bytes of the open file ``fd`` whose stat is
    ``st`` (``name``: the file, for messages): an ``mmap`` and its ``cast("Q")`` view if the
    file is :func:`mappable`, else a
    :class:`FileBytes` and its :class:`FileWords`, typed as what they stand in for (the part
    of it the tmpfs modules use), as ``hotpath.map_file`` types its ``Mapping``."""
    if mappable(st):
        mm = map_file(fd, size, writable=writable)
        return mm, memoryview(mm).cast("Q")
    file = FileBytes(fd, size, name)
    return cast(mmap.mmap, file), cast(memoryview, file.words)


def is_unmapped(mm: object) -> bool:
    """Whether ``open_words`` gave a :class:`FileBytes` rather than a mapping."""
    return type(mm) is FileBytes
