"""shmfs.php: PHP's functions, ported from php-src's ext/sysvshm/tests/*.phpt.

Which of those tests shmfs ports, and why, is in docs/sysv-and-php.md §5.

The messages are PHP 8.2's. Where PHP 8.2 loses data or crashes (a failed replace, hostile
headers), the port keeps the data or reports corruption, as the notes below say.
"""

from __future__ import annotations

import subprocess
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

import shmfs
from shmfs.backends.sysv import ipc
from shmfs.php import (
    PHPWarning,
    ftok,
    shm_attach,
    shm_detach,
    shm_get_var,
    shm_has_var,
    shm_put_var,
    shm_remove,
    shm_remove_var,
)


@pytest.fixture
def shm(key: int) -> Iterator[Any]:
    segment = shm_attach(key, 1024)
    assert segment is not False
    yield segment
    if segment._backend is not None:
        shm_remove(segment)
    subprocess.run(["ipcrm", "-S", hex(key)], capture_output=True, check=False)


def warned(call: Any) -> tuple[Any, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    return result, [str(w.message) for w in caught if issubclass(w.category, PHPWarning)]


def test_001_ftok(tmp_path: Any) -> None:
    with pytest.raises(shmfs.InvalidArgument, match=r"\(\$filename\) cannot be empty"):
        ftok("", "a")
    with pytest.raises(shmfs.InvalidArgument, match=r"must be a single character"):
        ftok(str(tmp_path), "ab")
    assert warned(lambda: ftok(str(tmp_path / "missing"), "a")) == (
        -1,
        ["ftok(): ftok() failed - No such file or directory"],
    )
    assert isinstance(ftok(str(tmp_path), "a"), int)


def test_002_attach_sizes(key: int) -> None:
    for size in (0, -1):
        with pytest.raises(shmfs.InvalidArgument, match=r"\(\$size\) must be greater than 0"):
            shm_attach(key, size)
    for args in ((1024,), (1024, 0o666), ()):
        segment = shm_attach(key, *args)
        assert segment is not False
        assert shm_remove(segment) is True
    subprocess.run(["ipcrm", "-S", hex(key)], capture_output=True, check=False)


def test_003_detach_twice(shm: Any) -> None:
    assert shm_detach(shm) is True
    with pytest.raises(shmfs.SegmentDetached, match="has already been destroyed"):
        shm_detach(shm)
    with pytest.raises(shmfs.SegmentDetached, match="has already been destroyed"):
        shm_remove(shm)
    again = shm_attach(shm.key)
    assert again is not False
    shm_remove(again)


def test_004_put_var(shm: Any) -> None:
    assert shm_put_var(shm, -1, "negative index")
    assert shm_put_var(shm, 1, "value")
    assert shm_put_var(shm, 1, "value")
    result, messages = warned(lambda: shm_put_var(shm, 1, "x" * 2048))
    assert result is False
    assert messages == ["shm_put_var(): Not enough shared memory left"]
    assert shm_get_var(shm, 1) == "value"  # PHP 8.2 has lost it here; we keep it


def test_005_get_var(shm: Any) -> None:
    for index in (1000, -10000):
        result, messages = warned(lambda i=index: shm_get_var(shm, i))
        assert result is False
        assert messages == [f"shm_get_var(): Variable key {index} doesn't exist"]
    values = ["string", {"a": 1}, [1, 2], False, None]
    for index, value in enumerate(values):
        assert shm_put_var(shm, index, value)
    assert [shm_get_var(shm, index) for index in range(len(values))] == values
    for value in ("one", "two", None):
        shm_put_var(shm, 3, value)
    assert shm_get_var(shm, 3) is None
    assert shm_has_var(shm, 3)


def test_006_remove_var(shm: Any) -> None:
    result, messages = warned(lambda: shm_remove_var(shm, 5))
    assert (result, messages) == (False, ["shm_remove_var(): Variable key 5 doesn't exist"])
    shm_put_var(shm, 5, "x")
    assert shm_remove_var(shm, 5) is True
    assert not shm_has_var(shm, 5)
    assert warned(lambda: shm_get_var(shm, 5))[0] is False


def test_007_remove(shm: Any) -> None:
    shm_put_var(shm, 1, "gone soon")
    assert shm_remove(shm) is True
    assert shm_remove(shm) is True  # as in PHP
    again = shm_attach(shm.key)
    assert again is not False and not shm_has_var(again, 1)  # a fresh segment
    assert shm_detach(again) is True
    with pytest.raises(shmfs.SegmentDetached, match="has already been destroyed"):
        shm_remove(again)  # 007.phpt: remove after detach throws
    shm_remove(shm_attach(shm.key))


def test_get_var_leak_corrupted_data(shm: Any) -> None:
    shm_put_var(shm, 1, "a string with one corrupted byte")
    shmid = ipc.shmget(shm.key, 0, 0)
    attachment = ipc.Attachment(shmid, 1024)
    try:
        attachment.view[0x40 + 0] = ord("X")  # the 's' of s:NN:"..." becomes garbage
    finally:
        attachment.detach()
    result, messages = warned(lambda: shm_get_var(shm, 1))
    assert result is False
    assert messages == ["shm_get_var(): Variable data in shared memory is corrupted"]


def test_serialize_exception_leaves_segment_untouched(shm: Any) -> None:
    shm_put_var(shm, 1, "old")
    with pytest.raises(shmfs.SerializationError):
        shm_put_var(shm, 1, object())  # PHP 8.2 stores an empty chunk and loses "old"
    assert shm_get_var(shm, 1) == "old"


@pytest.mark.parametrize(
    ("offset", "value"),
    [
        (16, 1 << 30),  # end far past total (shm_remove_var_end_bounds.phpt)
        (8, -(1 << 40)),  # start negative (shm_has_var_start_bounds.phpt)
        (32, 1 << 40),  # total larger than the segment (shm_attach_header_bounds.phpt)
        (0x28 + 8, (1 << 63) - 1),  # a chunk length of PHP_INT_MAX (chunk_length_bounds)
    ],
)
def test_hostile_headers_are_corruption_not_crashes(shm: Any, offset: int, value: int) -> None:
    shm_put_var(shm, 1, "x")
    shmid = ipc.shmget(shm.key, 0, 0)
    attachment = ipc.Attachment(shmid, 1024)
    try:
        pristine = bytes(attachment.view[:1024])
        attachment.view[offset : offset + 8] = value.to_bytes(8, "little", signed=True)
    finally:
        attachment.detach()
    for call in (lambda: shm_get_var(shm, 1), lambda: shm_has_var(shm, 1)):
        try:
            result, messages = warned(call)
        except shmfs.CorruptSegment:
            continue  # has_var has no false-with-warning form in PHP: it raises
        assert result is False
        assert messages == ["shm_get_var(): Variable data in shared memory is corrupted"]
    with pytest.raises(shmfs.CorruptSegment):
        shm.put(2, "y")
    attachment = ipc.Attachment(shmid, 1024)
    try:  # undo the damage so the fixture can remove the segment normally
        attachment.view[:1024] = pristine
    finally:
        attachment.detach()
