"""Slabs: small variables, many to a mapped file, in slots of a few size classes.

Why. A file per variable costs a page and an inode, 4 KiB for a 100-byte value, and a system
call or a mapping per variable touched. Slots packed in a few files per size class cost their
size (``layout.CLASSES``: at most an eighth above the frame, past 16-byte rounding), and a
process maps a handful of files whatever the number of variables.

A slot is written once and never in place: a put writes its frame into a free slot, seals it,
and then publishes it in the index (``index.py``); only then is the old slot freed. So a writer
killed at any instant leaves the index naming the old slot or the new one, each whole; what it
had taken and not yet published (or published and not yet freed) is found by the next lock
holder, which rebuilds every free list from the index (``recovery.py``).

A slot's first word, the *seal*, is ``stamp << 16 | length``, the stamp unique to that write
(``M_STAMP``); the second names the variable. Freeing sets the seal to zero before the frame is
zeroed. Readers take no lock: they copy the frame between two loads of the seal and accept the
copy only if the seal was the same, non-zero, and the slot named their variable (a seqlock whose
sequence never repeats, ``seqlock.py``). Each file is allocated whole with ``posix_fallocate``
before it is mapped, so a full tmpfs is ``SegmentFull`` when a file is added, never SIGBUS.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from typing import Final

from shmfs.backends.fsutil import open_file, translate
from shmfs.backends.tmpfs import layout as L
from shmfs.backends.tmpfs.unmapped import check_allocated, mappable, open_words
from shmfs.errors import CorruptSegment, UnsafeSegment

__all__ = ["SlabFile", "Slabs", "location", "slab_name", "split_location"]

_CLASS_SHIFT, _FILE_SHIFT = L.LOC_CLASS_SHIFT, L.LOC_FILE_SHIFT
_SLOT_MASK: Final = L.LOC_SLOTS - 1
_FILE_MASK: Final = L.LOC_FILES - 1
_LENGTH: Final = L.SEAL_LENGTH_MASK
_OPEN_RW: Final = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_RO: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def slab_name(number: int, file: int) -> str:
    """The file name of class ``number``'s file ``file``."""
    return f".slab-{number}-{file}"


def location(number: int, file: int, slot: int) -> int:
    """The index's location word for a slot."""
    return (number + 1) << _CLASS_SHIFT | file << _FILE_SHIFT | slot


def split_location(loc: int) -> tuple[int, int, int]:
    """``(class, file, slot)`` of a slot's location word.

    Raises:
        CorruptSegment: no slot of the format has that location.
    """
    number = (loc >> _CLASS_SHIFT) - 1
    file = loc >> _FILE_SHIFT & _FILE_MASK
    slot = loc & _SLOT_MASK
    if not 0 <= number < L.NCLASSES or slot >= L.slots_in(number, file):
        raise CorruptSegment(f"location {loc:#x} names no slot")
    return number, file, slot


class SlabFile:
    """One mapped slab file.

    Args:
        fd: An open descriptor of the file; the caller closes it.
        number: Its class.
        file: Its number within the class.
        writable: Map it for writing (the segment lock must be held to write).
        trusted: Whether only trusted uids can have written it.
    """

    __slots__ = ("hot", "mm", "size", "slot_size", "slots", "trusted", "words", "writable")

    def __init__(self, fd: int, number: int, file: int, *, writable: bool, trusted: bool) -> None:
        st = os.fstat(fd)
        self.size = L.slab_size(number, file)
        if not stat.S_ISREG(st.st_mode) or st.st_size != self.size:
            raise CorruptSegment(f"slab file {slab_name(number, file)} is not {self.size} bytes")
        check_allocated(st, f"slab file {slab_name(number, file)}")
        # Mapped only if nobody else can shrink it (unmapped.py); keeps no descriptor then.
        self.mm, self.words = open_words(
            fd, st, self.size, writable=writable, name=f"slab file {slab_name(number, file)}"
        )
        words = self.words
        if (
            words[L.SLAB_W_MAGIC] != L.SLAB_MAGIC
            or words[L.SLAB_W_VERSION] != L.SLAB_VERSION
            or words[L.SLAB_W_CLASS] != number
            or words[L.SLAB_W_FILE] != file
        ):
            self.close()
            raise CorruptSegment(f"slab file {slab_name(number, file)} has a bad header")
        self.slot_size = L.CLASSES[number]
        self.slots = L.slots_in(number, file)
        self.writable = writable
        self.trusted = trusted
        # What the C fast path (shmfs/_hot_c/slab.c) reads of us, in one attribute lookup;
        # None for a file read with pread, which it leaves to Python.
        self.hot = (
            (self.words, self.slot_size, self.slots, trusted, writable) if mappable(st) else None
        )

    def close(self) -> None:
        """Unmap; harmless while another thread still reads (the GC unmaps it then)."""
        with contextlib.suppress(BufferError, ValueError, AttributeError):
            self.words.release()
            self.mm.close()


def _whole(slab: SlabFile, word: int, key: int, seal: int) -> int:
    """The frame length ``seal`` gives if the slot at ``word`` is sealed, names variable ``key``
    and has room for that length; else -1."""
    length: int = seal & _LENGTH
    if not seal or slab.words[word + 1] != key or length + L.SLOT_HEADER > slab.slot_size:
        return -1
    return length


def create_slab(dir_fd: int, number: int, file: int, mode: int, tmp: str) -> None:
    """Add class ``number``'s file ``file``, whole and allocated, unless it is there already
    (a writer that died after adding it left it, all slots free). Segment lock held.

    Raises:
        OSError: from the filesystem (ENOSPC from ``posix_fallocate`` included).
    """
    name = slab_name(number, file)
    with contextlib.suppress(FileNotFoundError):
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return
    size = L.slab_size(number, file)
    header = memoryview(bytearray(L.SLAB_HEADER)).cast("Q")
    header[L.SLAB_W_MAGIC], header[L.SLAB_W_VERSION] = L.SLAB_MAGIC, L.SLAB_VERSION
    header[L.SLAB_W_CLASS], header[L.SLAB_W_FILE] = number, file
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, mode, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)  # the umask must not decide who can read the segment
        os.posix_fallocate(fd, 0, size)
        if os.pwrite(fd, header.tobytes(), 0) != L.SLAB_HEADER:
            raise OSError(28, "short write of a slab header")
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    finally:
        os.close(fd)


class Slabs:
    """A handle's mappings of a segment's slab files, and the slot operations on them.

    Args:
        dir_fd: The segment directory (a callable: it is reopened after a fork).
        trusted: Whether a file with this ``stat`` can only have been written by trusted uids.
        one_link: Refuse to write a file with other hard links (a directory others may write).
    """

    def __init__(
        self,
        dir_fd: Callable[[], int],
        trusted: Callable[[os.stat_result], bool],
        *,
        one_link: bool = False,
    ) -> None:
        self._dir_fd = dir_fd
        self._trusted = trusted
        self._one_link = one_link
        # (class << 16 | file) -> its mapping; as many as the segment has files, no more.
        self.files: dict[int, SlabFile] = {}

    def file(self, number: int, file: int) -> SlabFile:
        """The mapping of a slab file, mapped on first use.

        Raises:
            CorruptSegment: the file is missing or not a slab file of that class.
            OSError: from opening or mapping it.
        """
        found = self.files.get(number << 16 | file)
        if found is not None:
            return found
        name, writable = slab_name(number, file), True
        try:
            try:
                fd, st = open_file(
                    name,
                    self._dir_fd(),
                    write=True,
                    what=f"slab file {name}",
                    single_link=self._one_link,
                )
            except UnsafeSegment:
                raise  # a PermissionError too, but not one that reading would cure
            except PermissionError:
                writable = False  # another trusted user's segment that we may only read
                fd, st = open_file(name, self._dir_fd(), write=False, what=f"slab file {name}")
        except FileNotFoundError:
            raise CorruptSegment(f"slab file {name} is missing") from None
        except OSError as exc:  # ELOOP: a symlink put in its place, which O_NOFOLLOW refused
            raise translate(exc, f"cannot open slab file {name}") from exc
        try:
            slab = SlabFile(fd, number, file, writable=writable, trusted=self._trusted(st))
        finally:
            os.close(fd)
        self.files[number << 16 | file] = slab
        return slab

    def slot(self, loc: int) -> tuple[SlabFile, int]:
        """The mapping a slot lies in, and the slot's first word there.

        Raises:
            CorruptSegment: the location names no slot of the format.
        """
        slab = self.files.get((loc >> _CLASS_SHIFT) - 1 << 16 | loc >> _FILE_SHIFT & _FILE_MASK)
        slot = loc & _SLOT_MASK
        if slab is None:  # not mapped yet, or no such file: checked in full
            number, file, slot = split_location(loc)
            slab = self.file(number, file)
        elif slot >= slab.slots:
            raise CorruptSegment(f"location {loc:#x} names no slot")
        return slab, (L.SLAB_HEADER + slot * slab.slot_size) // L.WORD

    def read(self, loc: int, key: int) -> tuple[bytes | None, bool]:
        """Copy the frame in slot ``loc`` if it holds variable ``key`` (unsigned) whole, with
        whether only trusted uids can have written its file; ``None`` if a writer freed or
        reused the slot meanwhile (look it up again)."""
        slab, word = self.slot(loc)
        words = slab.words
        seal = words[word]
        length = _whole(slab, word, key, seal)
        if length < 0:
            return None, False
        start = word * L.WORD + L.SLOT_HEADER
        data = slab.mm[start : start + length]
        return (data if words[word] == seal else None), slab.trusted

    def length(self, loc: int, key: int) -> int:
        """The length of the frame in slot ``loc``, read with no writer running (no copy).
        Segment lock held.

        Raises:
            CorruptSegment: the slot is free, or holds another variable or a bad length.
        """
        slab, word = self.slot(loc)
        length = _whole(slab, word, key, slab.words[word])
        if length < 0:
            raise CorruptSegment("the index names a slot that is free, or another variable's")
        return length

    def frame(self, loc: int, key: int) -> bytes:
        """The frame in slot ``loc``, read with no writer running. Segment lock held.

        Raises:
            CorruptSegment: the slot is free, or holds another variable or a bad length.
        """
        data = self.read(loc, key)[0]
        if data is None:
            raise CorruptSegment("the index names a slot that is free, or another variable's")
        return data

    def seal(self, loc: int) -> int:
        """The slot's seal: it changes with every write (for ``version``)."""
        slab, word = self.slot(loc)
        return int(slab.words[word])

    def write(self, loc: int, key: int, data: bytes, stamp: int) -> None:
        """Fill the free slot ``loc`` with ``data`` for variable ``key`` and seal it; nobody
        reads it until the index names it. Segment lock held."""
        slab, word = self.slot(loc)
        start = word * L.WORD + L.SLOT_HEADER
        slab.mm[start : start + len(data)] = data
        slab.words[word + 1] = key
        slab.words[word] = stamp << L.SEAL_LENGTH_BITS | len(data)

    def release(self, loc: int, meta: memoryview) -> None:
        """Unseal slot ``loc``, zero it, and put it at the head of its class's free list.
        Segment lock held; the index no longer names it."""
        number = (loc >> _CLASS_SHIFT) - 1
        slab, word = self.slot(loc)
        words = slab.words
        words[word] = 0  # first: readers copying it now will find the seal changed
        start = word * L.WORD + L.SLOT_HEADER
        slab.mm[start : word * L.WORD + slab.slot_size] = bytes(slab.slot_size - L.SLOT_HEADER)
        head = L.M_CLASSES + 2 * number
        words[word + 1] = meta[head]
        meta[head] = loc

    def allocate(self, meta: memoryview, number: int, mode: int, tmp: Callable[[], str]) -> int:
        """Take a free slot of class ``number``: the head of its free list, else the next
        never-used slot, adding a file when the last is used up. Segment lock held; the caller
        has marked the segment DIRTY (a death from here on leaks the slot until a recovery).

        Raises:
            CorruptSegment: the free list names a slot that is not free.
            OSError: from adding a file (ENOSPC included).
        """
        head = L.M_CLASSES + 2 * number
        loc = int(meta[head])
        if loc:
            slab, word = self.slot(loc)
            if (loc >> _CLASS_SHIFT) - 1 != number or slab.words[word]:
                raise CorruptSegment("a free list names a slot that is in use")
            meta[head] = slab.words[word + 1]
            return loc
        bump = int(meta[head + 1])
        file, slot = bump >> 32, bump & 0xFFFF_FFFF
        if bump == 0 or slot >= L.slots_in(number, file):
            file, slot = (0, 0) if bump == 0 else (file + 1, 0)
            if file >= L.LOC_FILES:
                raise OSError(28, "the slot class has no file number left")
            create_slab(self._dir_fd(), number, file, mode, tmp())
        meta[head + 1] = file << 32 | (slot + 1)
        return location(number, file, slot)

    def trusted(self, loc: int) -> bool:
        """Whether only trusted uids can have written slot ``loc``'s file."""
        number, file, _ = split_location(loc)
        return self.file(number, file).trusted

    def close(self) -> None:
        """Unmap every file. The dict is emptied in place: the C fast path holds it."""
        files = list(self.files.values())
        self.files.clear()
        for slab in files:
            slab.close()
