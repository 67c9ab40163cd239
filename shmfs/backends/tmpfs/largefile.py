"""One variable on tmpfs: a pre-allocated file with two slots, written in place, read without locks.

Why this layout. The obvious design, a new file per put published with ``rename()``, is crash-safe
but costs 26-42 us per put here (open, write, rename, close and the dentry work), and a reader
must open the new file every time. Writing in place into an existing mapping costs 3-5 us, but
a writer killed half way leaves a torn value, and a file truncated or grown under a reader's
mapping, or written through a sparse mapping on a full tmpfs, kills that reader with SIGBUS
(docs/linux-behaviour.md, parts a and d). So each variable file is allocated once with
``posix_fallocate`` (ENOSPC surfaces there, as an error, never later as SIGBUS), is never
truncated, and holds two slots::

    offset  word  field
         0     0  magic      b"SHMFSVAR"
         8     1  version    VERSION
        16     2  capacity   K, bytes per slot
        24     3  control    high half: generation g (31 bits) and the retired flag;
                             low half: a check of the high half. Slot g & 1 is current.
        32     4  seq[0]     2g once slot 0 holds generation g; odd while it is being written
        40     5  seq[1]
        48     6  length[0]  bytes in slot 0
        56     7  length[1]
        64        slot 0     K bytes
    64 + K        slot 1     K bytes

A writer (holding the segment lock) fills the slot that is *not* current, bracketed by its
sequence word going to ``2(g+1) - 1`` then ``2(g+1)``, and then publishes it by storing the sealed
``g + 1`` into the control word: one aligned 8-byte store, which readers see whole or not at all.
A writer killed at any instant leaves the control word pointing at the old, untouched slot.
Readers take no lock: they read the control word, copy the current slot and check that its
sequence word is ``2g`` before and after the copy (a seqlock); if not, a writer reused the slot
mid-copy and they copy again. The frame's checksum (shmfs.codecs) is a second line of defence on
CPUs that reorder loads.

The control word carries a check of itself, and each slot's sequence word names the generation
it holds, so damage to either is reported as ``CorruptSegment`` instead of silently serving the
other slot's older value.

A value that outgrows its slot gets a new, bigger file, published with ``rename()``; the old file
is then marked retired (control bit 63) so that processes still mapping it reopen by name, and
its slots are zeroed. Files are at least one page, so values up to about 2 KiB never need that.

Words are written with single stores through ``memoryview.cast("Q")``, never ``struct.pack_into``,
which writes byte by byte where a concurrent reader could see a half-written word. The one
exception is a file the writer keeps no mapping of (``write_unmapped``): its words go through
``pwrite``, and the checks above are what make a half-written word harmless there.

Its length (over 400 lines): one file format, with its mapped reader and writer (``VarFile``) and
its unmapped twin (``read_unmapped``, ``write_unmapped``) side by side, so that both follow the
same seqlock rules line for line.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import threading
from typing import Any, Final, cast

from shmfs.backends.tmpfs.unmapped import check_allocated, is_unmapped, mappable, open_words
from shmfs.errors import CorruptSegment
from shmfs.frame import SPLIT_HEAD, Pieces, Split, body_at

__all__ = [
    "CONTENDED",
    "HEADER_SIZE",
    "MAP_IT",
    "REOPEN",
    "VarFile",
    "capacity_for",
    "create",
    "read_length",
    "read_unmapped",
    "unmapped_state",
    "write_unmapped",
]

HEADER_SIZE: Final = 64
MAGIC: Final = int.from_bytes(b"SHMFSVAR", "little")
VERSION: Final = 1
PAGE: Final = mmap.PAGESIZE
_RETIRED: Final = 0x8000_0000
_GENERATIONS: Final = 0x7FFF_FFFF
_LOW: Final = 0xFFFF_FFFF
_WORD: Final = (1 << 64) - 1
_CONTROL, _SEQ, _LENGTH = 3, 4, 6
# Lock-free read attempts before the caller falls back to reading under the lock; a writer
# reusing the slot being copied twice in a row is already rare.
_SPINS: Final = 8
#: Returned by :meth:`VarFile.read` when the file was retired: reopen it by name.
REOPEN: Final = None
#: Returned by :meth:`VarFile.read` when writers kept overtaking the copy: read under the lock.
CONTENDED: Final = b""


_CHECK_MULTIPLIER: Final = 0x9E37_79B1
_CHECK_MASK: Final = 0x5BD1_E995  # makes an all-zero control word invalid


def _check(high: int) -> int:
    """A check of the control word's high half (``VarFile.read`` inlines it)."""
    return ((high * _CHECK_MULTIPLIER) & _LOW) ^ _CHECK_MASK


def _seal(generation: int, *, retired: bool = False) -> int:
    high = (generation & _GENERATIONS) | (_RETIRED if retired else 0)
    return (high << 32) | _check(high)


def _generation(control: int) -> int:
    """The generation a control word publishes; ``CorruptSegment`` if it fails its check."""
    high = control >> 32
    if control & _LOW != _check(high):
        raise CorruptSegment("variable file's control word fails its check")
    return high


def _sound_header(words: memoryview, size: int) -> bool:
    """Whether a header's magic, version and capacity say a ``size``-byte file of ours."""
    return words[0] == MAGIC and words[1] == VERSION and HEADER_SIZE + 2 * words[2] == size


def _parts(data: bytes | Pieces) -> list[bytes]:
    return data.parts if isinstance(data, Pieces) else [data]


_COPY_AGAIN: Final = (-1, 0, 0)


def _published(words: memoryview, capacity: int) -> tuple[int, int, int] | None:
    """``(slot, seq, length)`` of the value the control word publishes; ``None`` if the file
    was retired; slot -1 if that slot's words do not (yet) match it: a writer is at it, copy
    again.

    Raises:
        CorruptSegment: the control word fails its check.
    """
    generation = _generation(words[_CONTROL])
    if generation & _RETIRED:
        return None
    slot = generation & 1
    length = words[_LENGTH + slot]
    if words[_SEQ + slot] != generation * 2 or length > capacity:
        return _COPY_AGAIN
    return slot, generation * 2, int(length)


# Values above this are copied into a per-thread buffer that is reused, not a fresh bytes
# object: allocating and freeing a megabyte on every get makes glibc hand the memory back to the
# kernel and fault it in again, which costs more than the copy itself (770 us vs 50 us per MiB).
_SCRATCH_ABOVE: Final = 64 * 1024
_scratch = threading.local()


def _into_scratch(mm: mmap.mmap, start: int, length: int) -> memoryview:
    buffer: bytearray | None = getattr(_scratch, "buffer", None)
    if buffer is None or len(buffer) < length:
        buffer = _scratch.buffer = bytearray(length)
    view = memoryview(buffer)[:length]
    if is_unmapped(mm):  # a file read with pread (unmapped.py)
        cast(Any, mm).readinto(view, start)
        return view
    with memoryview(mm) as whole, whole[start : start + length] as source:
        view[:] = source  # released at once, so the mapping can still be closed
    return view


def _read_large(mm: mmap.mmap, start: int, length: int) -> memoryview | Split:
    """A large value's frame: split around its body if it holds a ``bytes`` (one copy, into
    the object the caller returns), else copied into the thread's scratch buffer."""
    head = mm[start : start + SPLIT_HEAD]
    at = body_at(head, length)
    if at is None:
        return _into_scratch(mm, start, length)
    end = start + length - 1
    return Split(head[:at], mm[start + at : end], mm[end : end + 1])


def capacity_for(length: int, current: int = 0) -> int:
    """Slot capacity for a ``length``-byte value growing out of ``current``: the file is whole
    pages, and growth is at least 1.5x so a value that keeps growing is not copied on every put."""
    wanted = max(length, current + current // 2)
    pages = -(-(HEADER_SIZE + 2 * wanted) // PAGE)
    return (pages * PAGE - HEADER_SIZE) // 2 // 8 * 8


def create(dir_fd: int, name: str, data: bytes | Pieces, mode: int, capacity: int) -> None:
    """Write a complete new variable file ``name`` holding ``data`` in slot 0.

    The caller publishes it with ``rename()``; until then nobody sees it.

    Raises:
        OSError: from the filesystem (ENOSPC from ``posix_fallocate`` included).
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, mode, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)  # the umask must not decide who can read a value
        os.posix_fallocate(fd, 0, HEADER_SIZE + 2 * capacity)
        header = memoryview(bytearray(HEADER_SIZE)).cast("Q")
        header[0], header[1], header[2] = MAGIC, VERSION, capacity
        header[_CONTROL], header[_SEQ], header[_LENGTH] = _seal(0), 0, len(data)
        _write_all(fd, [header.tobytes(), *_parts(data)], 0)
    except BaseException:
        os.close(fd)
        os.unlink(name, dir_fd=dir_fd)
        raise
    os.close(fd)


def _write_all(fd: int, parts: list[bytes], offset: int) -> None:
    """``pwritev`` until every byte is written: short writes happen (RLIMIT_FSIZE, signals)."""
    views = [memoryview(part) for part in parts]
    while views:
        written = os.pwritev(fd, views, offset)
        offset += written
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def read_length(fd: int) -> int:
    """Length of the current value of an unmapped variable file (for recounting)."""
    raw = os.pread(fd, HEADER_SIZE, 0)
    if len(raw) < HEADER_SIZE:
        return 0
    words = memoryview(raw).cast("Q")
    if words[0] != MAGIC:
        return 0
    try:
        return int(words[_LENGTH + (_generation(words[_CONTROL]) & 1)])
    except CorruptSegment:
        return 0


#: Returned by :func:`read_unmapped` for a value over 64 KiB: map it.
MAP_IT: Final = b"map"


def read_unmapped(fd: int, size: int) -> bytes | None:
    """Copy the current value out of an open variable file of ``size`` bytes with ``pread``,
    without mapping it; ``REOPEN``, ``CONTENDED`` as :meth:`VarFile.read`, or ``MAP_IT``.

    For variables read too rarely to be worth a mapping: mapping a file and later unmapping it
    costs about 12 us, a pread under 1 us. The same seqlock as :meth:`VarFile.read`: the first
    pread copies the header (and the slot, when it is in the first page), the last re-reads the
    slot's sequence.

    Raises:
        CorruptSegment: not a variable file of this version, or the control word fails its check.
        OSError: from ``pread``.
    """
    if size < HEADER_SIZE + 16 or size % 8:
        raise CorruptSegment(f"variable file is {size} bytes, not a shmfs variable")
    for _ in range(_SPINS):
        page = os.pread(fd, min(size, PAGE), 0)
        if len(page) < HEADER_SIZE:
            raise CorruptSegment("variable file is shorter than its header")
        words = memoryview(page)[:HEADER_SIZE].cast("Q")
        if not _sound_header(words, size):
            raise CorruptSegment("variable file has a bad header (magic, version or capacity)")
        published = _published(words, words[2])
        if published is None:
            return REOPEN
        slot, seq, length = published
        if slot < 0:
            continue
        start = HEADER_SIZE + slot * words[2]
        if start + length <= len(page):
            data = page[start : start + length]
        elif length <= _SCRATCH_ABOVE:
            data = os.pread(fd, length, start)
        else:
            return MAP_IT
        if int.from_bytes(os.pread(fd, 8, (_SEQ + slot) * 8), "little") == seq:
            return data
    return CONTENDED


def unmapped_state(fd: int) -> tuple[int, int, int] | None:
    """``(generation, capacity, length)`` of an open, unmapped variable file, for
    :func:`write_unmapped`; ``None`` if it is not a sound, current one (the mapped path then
    says what is wrong)."""
    st = os.fstat(fd)
    raw = os.pread(fd, HEADER_SIZE, 0)
    if not stat.S_ISREG(st.st_mode) or len(raw) < HEADER_SIZE:
        return None
    words = memoryview(raw).cast("Q")
    if not _sound_header(words, st.st_size):
        return None
    try:
        published = _published(words, words[2])
    except CorruptSegment:
        return None
    if published is None or published[0] < 0:  # retired, or its slot inconsistent
        return None
    _, seq, length = published
    return seq // 2, int(words[2]), length


def write_unmapped(fd: int, generation: int, capacity: int, data: bytes | Pieces) -> None:
    """:meth:`VarFile.write` through ``pwrite``, for a file we keep no mapping of (mapping it to
    write once, and unmapping another to make room, costs 12 us). Segment lock held; the state
    comes from :func:`unmapped_state` under the same lock.

    Each word is one aligned 8-byte ``pwrite``, which the kernel copies with wide stores, but
    nothing promises it is a single one; the protocol does not rest on it: a control word seen
    half-written fails its self-check and a sequence word half-written matches no generation,
    so a reader copies again, or under the lock.
    """
    generation = (generation + 1) & _GENERATIONS
    slot = generation & 1
    _pwrite_word(fd, _SEQ + slot, (generation * 2 - 1) & _WORD)
    _write_all(fd, _parts(data), HEADER_SIZE + slot * capacity)
    _pwrite_word(fd, _LENGTH + slot, len(data))
    _pwrite_word(fd, _SEQ + slot, generation * 2)
    _pwrite_word(fd, _CONTROL, _seal(generation))


def _pwrite_word(fd: int, word: int, value: int) -> None:
    if os.pwrite(fd, value.to_bytes(8, "little"), word * 8) != 8:
        raise OSError(errno.EIO, "short write of a variable file's header word")


class VarFile:
    """A mapped variable file.

    Args:
        fd: An open descriptor of the file; the mapping keeps its own.
        writable: Map it for writing (the segment lock must be held to write).
        trusted: Whether only trusted uids can have written it (see ``Backend.trusted``).
        name: The file, as messages name it.
    """

    __slots__ = ("_mm", "_open", "_words", "capacity", "hot", "inode", "trusted", "writable")

    #: How many variable files this process has mapped, every handle's (largevars.py keeps
    #: it under a budget: each mapping is an entry in vm.max_map_count).
    live = 0
    _counting = threading.Lock()

    def __init__(
        self, fd: int, *, writable: bool, trusted: bool, name: str = "variable file"
    ) -> None:
        st = os.fstat(fd)
        size = st.st_size
        if not stat.S_ISREG(st.st_mode):
            raise CorruptSegment("variable is not a regular file")
        if size < HEADER_SIZE + 16 or size % 8:
            raise CorruptSegment(f"variable file is {size} bytes, not a shmfs variable")
        check_allocated(st, name)
        # Mapped only if nobody else can shrink it (unmapped.py); keeps no descriptor then.
        self._mm, self._words = open_words(fd, st, size, writable=writable, name=name)
        magic, version, capacity = self._words[0], self._words[1], self._words[2]
        if not _sound_header(self._words, size):
            self.close()
            if magic == MAGIC and version > VERSION:
                raise CorruptSegment(
                    f"variable file has format version {version}; this shmfs reads {VERSION}"
                )
            raise CorruptSegment("variable file has a bad header (magic, version or capacity)")
        self.capacity = int(capacity)
        self.inode = st.st_ino
        self.writable = writable
        self.trusted = trusted
        # What the C fast path (shmfs/_hot_c/) reads of us, in one attribute lookup; None for
        # a file read with pread, which it leaves to Python.
        self.hot = (self._words, self.capacity, trusted, writable) if mappable(st) else None
        counts = type(self)  # not the module's name for it, gone at interpreter exit
        with counts._counting:
            counts.live += 1
        self._open = True

    @property
    def retired(self) -> bool:
        """Whether the file was replaced or removed since it was mapped."""
        return bool(self._words[_CONTROL] >> 32 & _RETIRED)

    @property
    def version(self) -> tuple[int, int]:
        """Changes on every write, and when the file is replaced."""
        return (self.inode, int(self._words[_CONTROL]))

    @property
    def length(self) -> int:
        """Length of the current value (read it under the lock to rely on it)."""
        words = self._words
        return int(words[_LENGTH + (_generation(words[_CONTROL]) & 1)])

    def read(self) -> bytes | memoryview | Split | None:
        """Copy the current value; ``REOPEN`` if retired, ``CONTENDED`` if writers kept winning.

        A large value is copied into a buffer this thread reuses (see ``_into_scratch``): the
        view is good until the thread's next read, so decode it first. A large ``bytes`` value
        comes as a :class:`~shmfs.codecs.Split`, its body copied once into its own object.

        Raises:
            CorruptSegment: the control word fails its check.
        """
        # The first attempt is written out flat: it is every get's path, and each function
        # call or loop set-up Python would run here costs a twentieth of the whole get.
        words = self._words
        try:
            control = words[_CONTROL]
            high = control >> 32
            if control & _LOW == ((high * _CHECK_MULTIPLIER) & _LOW) ^ _CHECK_MASK:
                slot = high & 1
                seq = high * 2
                length = words[_LENGTH + slot]
                if not high & _RETIRED and words[_SEQ + slot] == seq and length <= _SCRATCH_ABOVE:
                    start = HEADER_SIZE + slot * self.capacity
                    data = self._mm[start : start + length]
                    if words[_SEQ + slot] == seq and length <= self.capacity:
                        return data
        except ValueError:  # another thread closed this mapping (cache eviction): reopen
            return REOPEN
        return self._read_retrying()

    def _read_retrying(self) -> bytes | memoryview | Split | None:
        """``read`` for large values, retired files, damage, and copies a writer overtook."""
        words, mm, capacity = self._words, self._mm, self.capacity
        try:
            for _ in range(_SPINS):
                published = _published(words, capacity)
                if published is None:
                    return REOPEN
                slot, seq, length = published
                if slot < 0:
                    continue
                start = HEADER_SIZE + slot * capacity
                if length > _SCRATCH_ABOVE:
                    data: bytes | memoryview | Split = _read_large(mm, start, length)
                else:
                    data = mm[start : start + length]
                if words[_SEQ + slot] == seq:
                    return data
        except ValueError:
            return REOPEN
        return CONTENDED

    def current(self) -> memoryview:
        """The current value where it lies in the mapping, read-only. Segment lock held, so no
        writer moves it meanwhile; after that, only the views protocol of ``TmpfsBackend.pin``
        keeps it still.

        Raises:
            CorruptSegment: the control or sequence words are inconsistent.
        """
        published = _published(self._words, self.capacity)
        if published is None or published[0] < 0:  # no writer runs: this is damage
            raise CorruptSegment("variable file's sequence or length words are inconsistent")
        slot, _, length = published
        start = HEADER_SIZE + slot * self.capacity
        if is_unmapped(self._mm):  # read with pread: a copy, taken under the lock
            return memoryview(self._mm[start : start + length]).toreadonly()
        with memoryview(self._mm) as whole:
            return whole[start : start + length].toreadonly()

    def write(self, data: bytes | Pieces) -> None:
        """Publish ``data`` through the slot that is not current. Segment lock held.

        Raises:
            CorruptSegment: the control word fails its check (nothing is written).
        """
        words = self._words
        generation = (_generation(words[_CONTROL]) + 1) & _GENERATIONS
        slot = generation & 1
        words[_SEQ + slot] = (generation * 2 - 1) & _WORD
        start = HEADER_SIZE + slot * self.capacity
        if isinstance(data, Pieces):
            at = start
            for part in data.parts:
                self._mm[at : at + len(part)] = part
                at += len(part)
        else:
            self._mm[start : start + len(data)] = data
        words[_LENGTH + slot] = len(data)
        words[_SEQ + slot] = generation * 2
        words[_CONTROL] = _seal(generation)

    def retire_and_scrub(self, *, scrub: bool = True) -> None:
        """Send readers elsewhere, then zero both slots (unless ``scrub`` is false: a view may
        still be reading them). Segment lock held.

        Retiring first means a reader never waits on a file that is going away; setting each
        sequence word to an odd value before zeroing means no reader accepts a half-zeroed copy.
        """
        words = self._words
        words[_CONTROL] = _seal(0, retired=True)
        if not scrub:
            return
        for slot in (0, 1):
            words[_SEQ + slot] = 1
            start = HEADER_SIZE + slot * self.capacity
            self._mm[start : start + self.capacity] = bytes(self.capacity)
            words[_LENGTH + slot] = 0

    def __del__(self) -> None:
        self.close()  # a mapping dropped without close() still leaves the process's count

    def close(self) -> None:
        """Unmap; safe to call twice, and harmless while another thread still reads."""
        if getattr(self, "_open", False):  # not set if __init__ failed
            self._open = False
            counts = type(self)
            with counts._counting:
                counts.live -= 1
        try:
            self._words.release()
            self._mm.close()
        except (AttributeError, BufferError, ValueError):  # AttributeError: __init__ failed
            pass  # a reader in another thread still holds it; the GC unmaps it later
