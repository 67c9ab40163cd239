"""PHP's ``shm_*`` functions, by name, so PHP code ports line by line.

They default to the ``sysv`` backend and the ``php`` codec, so they share segments with PHP
processes that run the same code. Signatures, defaults and results are PHP 8.2's: where PHP
warns and returns ``false``, these warn (:class:`PHPWarning`, with PHP's message) and return
``False``; where PHP throws, these raise.

Where PHP 8.2 loses data, these do not:

* a replacing ``shm_put_var`` that does not fit returns ``False`` *and keeps the old value*
  (PHP 8.2 has already removed it);
* a value that cannot be serialised raises before anything is written (PHP 8.2 stores an empty,
  unreadable chunk in its place).

Two deliberate refusals: key 0 (``IPC_PRIVATE``, a new private segment per call in PHP) and keys
outside 32 bits (PHP 8.2 truncates them silently) raise ``InvalidKey``, as newer PHP does.

Example::

    from shmfs.php import shm_attach, shm_put_var, shm_get_var, shm_detach

    shm = shm_attach(987654, 1024, 0o666)
    shm_put_var(shm, 1, "Hello.  This is the shared memory segment.")
    print(shm_get_var(shm, 1))
    shm_detach(shm)
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Literal

from shmfs.errors import (
    CorruptSegment,
    InvalidArgument,
    SegmentDetached,
    SegmentFull,
    SegmentNotFound,
    SerializationError,
    ShmfsError,
    VariableNotFound,
)
from shmfs.ftok import ftok as _c_ftok
from shmfs.segment import Segment, attach

__all__ = [
    "PHPWarning",
    "ftok",
    "shm_attach",
    "shm_detach",
    "shm_get_var",
    "shm_has_var",
    "shm_put_var",
    "shm_remove",
    "shm_remove_var",
]

#: PHP's ``sysvshm.init_mem`` default: the size ``shm_attach`` uses without one.
DEFAULT_SIZE = 10000
_DESTROYED = "Shared memory block has already been destroyed"


class PHPWarning(UserWarning):
    """What PHP prints as ``Warning: ...`` before returning ``false``."""


def _warn(function: str, message: str) -> Literal[False]:
    warnings.warn(f"{function}(): {message}", PHPWarning, stacklevel=3)
    return False


def _hex(key: int) -> str:
    # PHP formats the zend_long with %lx: negative keys show as 64-bit two's complement.
    return f"0x{key & 0xFFFF_FFFF_FFFF_FFFF:x}"


def shm_attach(
    key: int,
    size: int | None = None,
    permissions: int = 0o666,
    *,
    backend: str = "sysv",
    codec: str = "php",
    **options: Any,
) -> Segment | Literal[False]:
    """Create or open segment ``key`` (PHP: ``shm_attach``).

    Args:
        key: The System V key (see :func:`ftok`).
        size: Bytes when creating (default 10000, PHP's); ignored for an existing segment.
        permissions: Mode bits when creating (default 0o666, PHP's; the umask does not apply).
        backend: Another shmfs backend, if PHP is not to share the segment.
        codec: How values are stored; ``php`` so PHP can read them.
        **options: More :func:`shmfs.attach` options (``lock_timeout``, ``secret``, ...).

    Returns:
        The segment, or ``False`` with a :class:`PHPWarning` if it cannot be had.

    Raises:
        InvalidArgument: ``size`` is less than 1 (PHP's ``ValueError``).
        InvalidKey: ``key`` is 0 or outside 32 bits.
        InvalidKeyType: ``key`` is not an int.
    """
    if size is None:
        size = DEFAULT_SIZE
    if isinstance(size, int) and not isinstance(size, bool) and size < 1:
        raise InvalidArgument("shm_attach(): Argument #2 ($size) must be greater than 0")
    try:
        return attach(key, size, permissions, backend=backend, codec=codec, **options)
    except (InvalidArgument, TypeError):
        raise
    except ShmfsError as exc:
        return _warn("shm_attach", f"Failed for key {_hex(key)}: {exc}")


def _usable(shm: Segment) -> Segment:
    if not isinstance(shm, Segment):
        raise TypeError(f"expected a segment from shm_attach(), not {type(shm).__name__}")
    return shm


def shm_put_var(shm: Segment, key: int, value: Any) -> bool:
    """Store ``value`` at variable ``key`` (PHP: ``shm_put_var``).

    Returns:
        ``True``; ``False`` with PHP's "Not enough shared memory left" warning if it does not
        fit, in which case the old value is kept (PHP 8.2 loses it).

    Raises:
        SegmentDetached: ``shm`` was detached (PHP: "Shared memory block has already been
            destroyed").
        SerializationError: ``value`` cannot be stored; nothing was written.
    """
    try:
        _usable(shm).put(key, value)
    except SegmentDetached as exc:
        raise SegmentDetached(_DESTROYED) from exc
    except SegmentFull:
        return _warn("shm_put_var", "Not enough shared memory left")
    except SerializationError:
        raise
    return True


def shm_get_var(shm: Segment, key: int) -> Any:
    """Return the value at variable ``key`` (PHP: ``shm_get_var``).

    Returns:
        The value; ``False`` with a warning if there is none ("Variable key N doesn't exist")
        or it cannot be read ("Variable data in shared memory is corrupted"). As in PHP, a
        stored ``False`` looks the same: ask :func:`shm_has_var`.

    Raises:
        SegmentDetached: ``shm`` was detached.
    """
    try:
        return _usable(shm).get(key)
    except SegmentDetached as exc:
        raise SegmentDetached(_DESTROYED) from exc
    except VariableNotFound:
        return _warn("shm_get_var", f"Variable key {key} doesn't exist")
    except (CorruptSegment, SerializationError):
        return _warn("shm_get_var", "Variable data in shared memory is corrupted")


def shm_has_var(shm: Segment, key: int) -> bool:
    """Whether variable ``key`` exists (PHP: ``shm_has_var``).

    Raises:
        SegmentDetached: ``shm`` was detached.
    """
    try:
        return _usable(shm).has(key)
    except SegmentDetached as exc:
        raise SegmentDetached(_DESTROYED) from exc


def shm_remove_var(shm: Segment, key: int) -> bool:
    """Remove variable ``key`` (PHP: ``shm_remove_var``).

    Returns:
        ``True``; ``False`` with a warning if there was no such variable.

    Raises:
        SegmentDetached: ``shm`` was detached.
    """
    try:
        _usable(shm).remove(key)
    except SegmentDetached as exc:
        raise SegmentDetached(_DESTROYED) from exc
    except VariableNotFound:
        return _warn("shm_remove_var", f"Variable key {key} doesn't exist")
    return True


def shm_remove(shm: Segment) -> bool:
    """Remove the segment for every process, wiping its data (PHP: ``shm_remove``).

    Unlike PHP, the data is zeroed at once and other handles stop working: nothing of the
    segment outlives the call (PHP keeps it readable until the last process detaches). Removing
    a removed segment returns ``True``, as in PHP.

    Raises:
        SegmentDetached: ``shm`` was detached.
    """
    try:
        _usable(shm).destroy()
    except SegmentDetached as exc:
        raise SegmentDetached(_DESTROYED) from exc
    except SegmentNotFound:
        return True  # already removed: a second shm_remove succeeds in PHP too
    except ShmfsError as exc:
        return _warn("shm_remove", f"Failed for key {_hex(shm.key)}: {exc}")
    return True


def shm_detach(shm: Segment) -> bool:
    """Detach this handle; the segment and its data stay (PHP: ``shm_detach``).

    Raises:
        SegmentDetached: ``shm`` was already detached or removed (PHP throws there too).
    """
    segment = _usable(shm)
    if segment._backend is None:
        raise SegmentDetached(_DESTROYED)
    segment.detach()
    return True


def ftok(filename: str | bytes | os.PathLike[str], project_id: str) -> int:
    """A System V key from a file and a one-character project id (PHP: ``ftok``).

    Returns:
        The key; -1 with PHP's warning ("ftok() failed - No such file or directory") if the
        file cannot be stat'ed.

    Raises:
        InvalidArgument: an empty path, or a project id that is not one character.
    """
    key = _c_ftok(filename, project_id)
    if key == -1:
        try:
            os.stat(filename)
        except OSError as exc:
            _warn("ftok", f"ftok() failed - {exc.strerror}")
    return key
