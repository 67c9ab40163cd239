"""A handle's large variables: the files of their own (``largefile.py``), mapped under a budget.

A variable too big for a slot (``layout.SLOT_MAX``) keeps a file of its own, as every variable
did in format 1, so large values are copied once and viewed without a copy. Each mapping is an
entry in ``vm.max_map_count`` (and, before Python 3.13 without the C module, a descriptor), so a
handle keeps at most ``MAX_MAPPINGS`` of them and a process ``PROCESS_MAPPINGS``; past that,
variables are read with ``pread`` and written with ``pwrite`` (``largefile.read_unmapped``).
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from shmfs.backends.fsutil import file_mode, open_file, translate
from shmfs.backends.tmpfs import segdir as sd
from shmfs.backends.tmpfs.largefile import (
    CONTENDED,
    MAP_IT,
    VarFile,
    capacity_for,
    create,
    read_length,
    read_unmapped,
    unmapped_state,
    write_unmapped,
)
from shmfs.backends.tmpfs.unmapped import FileBytes
from shmfs.errors import CorruptSegment, UnsafeSegment
from shmfs.frame import Pieces, Split
from shmfs.hotpath import maps_without_descriptors

__all__ = ["GONE", "MAX_MAPPINGS", "PROCESS_MAPPINGS", "LargeVars"]


def _max_mappings() -> int:
    """Mappings kept open per segment handle. Each is an entry in vm.max_map_count (65530) and,
    where mappings keep a file descriptor (Python before 3.13 without the C module), a
    descriptor too: there, a sixteenth of the process's descriptor limit when this module is
    imported, and at least 256."""
    if maps_without_descriptors():
        return _MAPPINGS_CAP
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return _MAPPINGS_CAP
    return max(256, min(_MAPPINGS_CAP, soft // 16))


def _process_mappings() -> int:
    """Mappings of variable files kept by all of a process's handles together: half of
    vm.max_map_count (65530 by default), the rest being the process's own."""
    try:
        with open("/proc/sys/vm/max_map_count", encoding="ascii") as limit:
            return max(_MAPPINGS_CAP, int(limit.read()) // 2)
    except (OSError, ValueError):
        return 2 * _MAPPINGS_CAP


_MAPPINGS_CAP: Final = 16384
# Files read with pread (unmapped.py) kept open by a process, every handle's: each holds a
# descriptor, so they are kept far under the usual limit of 1024.
_UNMAPPED_CAP: Final = 256
MAX_MAPPINGS: Final = _max_mappings()
PROCESS_MAPPINGS: Final = _process_mappings()
# Once the mappings are all taken, other variables are read with pread; one read this many times
# among the last _MISS_MEMORY such reads is mapped (in place of the oldest mapping).
_ADMIT_AFTER: Final = 8
_MISS_MEMORY: Final = 4 * MAX_MAPPINGS
# A value shrinking below a quarter of a slot this large gets a smaller file, so one huge value
# does not pin its memory after it is replaced by a small one.
_SHRINK_ABOVE: Final = 64 * 1024

#: What :meth:`LargeVars.read` answers when the variable has no file: the index changed under
#: the reader (look it up again).
GONE: Final = None

_Data = bytes | memoryview | Split


def fits(capacity: int, length: int) -> bool:
    """Whether a value goes in place: it fits, and does not leave a big slot mostly empty."""
    return length <= capacity and not (capacity > _SHRINK_ABOVE and length * 4 < capacity)


class LargeVars:
    """The large-variable files of one handle's segment.

    Args:
        key: The segment's key, for messages.
        dir_fd: The segment directory (a callable: it is reopened after a fork).
        trusted: Whether a file with this ``stat`` can only have been written by trusted uids.
        one_link: Refuse to write a file with other hard links (a directory others may write).
    """

    def __init__(
        self,
        key: int,
        dir_fd: Callable[[], int],
        trusted: Callable[[os.stat_result], bool],
        *,
        one_link: bool = False,
    ) -> None:
        self.key = key
        self._dir_fd = dir_fd
        self._trusted = trusted
        self._one_link = one_link
        #: index -> mapping; the C fast path holds this very dict (cleared, never replaced).
        self.vars: OrderedDict[int, VarFile] = OrderedDict()
        # index -> recent reads without a mapping. OrderedDicts, because both are trimmed
        # from the oldest end in O(1).
        self._misses: OrderedDict[int, int] = OrderedDict()

    # ------------------------------------------------------------------ reading

    def read(self, index: int) -> tuple[_Data | None, bool]:
        """The current frame of ``index`` without the lock, with whether only trusted uids can
        have written the file it came from; :data:`GONE` if it has no file; ``CONTENDED`` if
        writers kept overtaking the copy (read it under the lock)."""
        var = self.vars.get(index)
        if var is not None:
            data = var.read()
            if data:
                return data, var.trusted
        elif not self._admit(index, room=not self.no_room()):
            found = self._read_unmapped(index)
            if found[0] is not MAP_IT:
                return found
        for _ in range(3):
            var = self.var(index)
            if var is None:
                return GONE, False
            data = var.read()
            if data or data == CONTENDED:
                return data, var.trusted
        return CONTENDED, False

    def no_room(self) -> bool:
        """Whether mapping another variable means unmapping one."""
        return (
            len(self.vars) >= MAX_MAPPINGS
            or VarFile.live >= PROCESS_MAPPINGS
            or FileBytes.live >= _UNMAPPED_CAP
        )

    def _admit(self, index: int, *, room: bool = False) -> bool:
        """Whether to map ``index`` now rather than copy its value with ``pread``: mapping a
        file costs about 12 us (most of it the first touch of its page), a pread copy about 5,
        a mapped get a fifteenth of that. So a variable is mapped on its second read while
        there is ``room``, and once the mappings are all taken, only if missed
        ``_ADMIT_AFTER`` times lately (a scan of many variables maps none)."""
        misses = self._misses
        count = misses.pop(index, 0) + 1
        if count >= (2 if room else _ADMIT_AFTER):
            return True
        misses[index] = count
        if len(misses) > _MISS_MEMORY:
            misses.popitem(last=False)
        return False

    def _read_unmapped(self, index: int) -> tuple[_Data | None, bool]:
        """``read`` of a variable we keep no mapping of: a ``pread`` copy, or ``MAP_IT``."""
        name = str(index)
        for _ in range(3):
            try:
                fd, st = open_file(name, self._dir_fd(), write=False, what=self._what(index))
            except FileNotFoundError:
                return GONE, False
            except OSError as exc:
                raise translate(exc, f"segment {self.key}: cannot open index {index}") from exc
            try:
                data = read_unmapped(fd, st.st_size)
            except OSError as exc:
                raise translate(exc, f"segment {self.key}: cannot read index {index}") from exc
            finally:
                os.close(fd)
            if data is None:
                continue  # replaced between our open and our read: open the new file
            if data is CONTENDED:
                return CONTENDED, False
            return data, self._trusted(st)
        return MAP_IT, False

    def _what(self, index: int) -> str:
        return f"segment {self.key} index {index}'s file"

    def trusted(self, index: int) -> bool:
        """Whether only trusted uids could have written ``index``'s current file."""
        var = self.var(index)
        return var is not None and var.trusted

    def var(self, index: int) -> VarFile | None:
        """The mapping of ``index``, opened (and cached) if needed; ``None`` if absent."""
        var = self.vars.get(index)
        if var is not None and not var.retired:
            return var
        if var is not None:
            del self.vars[index]
            var.close()
        try:
            return self._map(index)
        except OSError as exc:
            raise translate(exc, f"segment {self.key}: cannot open index {index}") from exc

    def _sound(self, index: int) -> VarFile | None:
        """``var(index)``, with a damaged file taken for none, and zeroed: what replaces or
        removes it need not read it (that is how a user clears a damaged variable), and nothing
        of its bytes outlives it. Segment lock held."""
        try:
            return self.var(index)
        except CorruptSegment:
            self.forget(index)
            with contextlib.suppress(OSError):  # not a regular file: nothing to zero
                sd.zero_file(self._dir_fd(), str(index), None)  # any writer's; one link
            return None

    def _map(self, index: int) -> VarFile | None:
        name, writable, what = str(index), True, self._what(index)
        try:
            fd, st = open_file(
                name, self._dir_fd(), write=True, what=what, single_link=self._one_link
            )
        except FileNotFoundError:
            return None
        except UnsafeSegment:
            raise  # a PermissionError too, but not one that reading would cure
        except PermissionError:
            writable = False  # another trusted user's segment that we may only read
            try:
                fd, st = open_file(name, self._dir_fd(), write=False, what=what)
            except FileNotFoundError:
                return None
        try:
            var = VarFile(
                fd,
                writable=writable,
                trusted=self._trusted(st),
                name=f"segment {self.key} variable file {name}",
            )
        finally:
            os.close(fd)
        if self.vars and self.no_room():
            self.vars.popitem(last=False)[1].close()
        self.vars[index] = var
        return var

    def length(self, index: int) -> int:
        """The length of ``index``'s current value (0 without a file). Segment lock held."""
        var = self.vars.get(index)
        if var is not None and not var.retired:
            return var.length
        try:
            fd, _ = open_file(str(index), self._dir_fd(), write=False, what=self._what(index))
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise translate(exc, f"segment {self.key}: cannot open index {index}") from exc
        try:
            return read_length(fd)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ writing

    def store(self, index: int, data: bytes | Pieces, *, perm: int, viewed: bool) -> None:
        """Store ``data`` as ``index``'s file: in place when it fits its slot and nobody views
        the segment, else in a new file renamed over the old one. Segment lock held, the
        segment marked DIRTY by the caller.

        Raises:
            UnsafeSegment: the file is not ours to write.
            OSError: from the filesystem.
        """
        var = self.vars.get(index)
        if var is None and self.no_room() and not viewed and self._store_unmapped(index, data):
            return
        if var is None or var.retired:
            var = self._sound(index)
        if var is not None and not var.writable:
            raise UnsafeSegment(f"segment {self.key}: no write permission for index {index}")
        if var is not None and not viewed and fits(var.capacity, len(data)):
            var.write(data)
        else:
            self._replace(index, data, var, perm=perm, scrub=not viewed)

    def _store_unmapped(self, index: int, data: bytes | Pieces) -> bool:
        """``store`` in place with pwrite, for a variable we keep no mapping of; ``False`` if it
        cannot be done so (absent, not ours to write, unsound, or too big for its slot)."""
        try:
            fd, _ = open_file(
                str(index),
                self._dir_fd(),
                write=True,
                what=self._what(index),
                single_link=self._one_link,
            )
        except (OSError, UnsafeSegment):
            return False
        try:
            state = unmapped_state(fd)
            if state is None or not fits(state[1], len(data)):
                return False
            generation, capacity, _ = state
            write_unmapped(fd, generation, capacity, data)
        finally:
            os.close(fd)
        return True

    def _replace(
        self, index: int, data: bytes | Pieces, old: VarFile | None, *, perm: int, scrub: bool
    ) -> None:
        """Publish ``data`` in a new file, then retire the old one, zeroed if ``scrub``."""
        capacity = capacity_for(len(data), old.capacity if old is not None else 0)
        if old is not None and len(data) * 4 < old.capacity:
            capacity = capacity_for(len(data))
        tmp = f".tmp-{sd.token()}"
        dir_fd = self._dir_fd()
        try:
            create(dir_fd, tmp, data, file_mode(perm), capacity)
            os.rename(tmp, str(index), src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        if old is not None:
            old.retire_and_scrub(scrub=scrub)

    def remove(self, index: int, *, scrub: bool) -> None:
        """Unlink ``index``'s file, then retire it and zero it (unless a view may read it).
        Segment lock held; the index no longer names it."""
        var = self._sound(index)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(str(index), dir_fd=self._dir_fd())
        if var is not None:
            var.retire_and_scrub(scrub=scrub)
            self.vars.pop(index, None)
            var.close()

    def forget(self, index: int) -> None:
        """Drop this handle's mapping of ``index``, if any."""
        var = self.vars.pop(index, None)
        if var is not None:
            var.close()

    def close(self) -> None:
        """Unmap every variable. The dict is emptied in place: the C fast path holds it."""
        vars_ = list(self.vars.values())
        self.vars.clear()
        self._misses.clear()
        for var in vars_:
            var.close()
