"""Everything a bench run creates, owned in one place so that one ``close()`` removes it.

Files go under one private directory in ``/dev/shm`` (the stores under test) and one in the
temp dir (sockets, scripts). System V keys are handed out here, checked free first, and
remembered: ``close()`` runs every registered closer, then removes any segment or semaphore set
still carrying one of *our* keys (a child killed mid-run, a destroy that failed) and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from typing import Self

__all__ = ["Scratch", "sysv_keys_in_use"]

SHM_ROOT = "/dev/shm"
# Keys are drawn from a range that says "shmfs bench" in hex, so a stray one is recognisable.
_KEY_LOW, _KEY_HIGH = 0x5EB0_0000, 0x5EBF_FFFF


def sysv_keys_in_use() -> set[int]:
    """Keys of every System V segment and semaphore set in this IPC namespace."""
    keys: set[int] = set()
    for table in ("/proc/sysvipc/shm", "/proc/sysvipc/sem"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as rows:
            next(rows, None)  # the column titles
            keys.update(int(row.split()[0]) for row in rows if row.strip())
    return keys


class Scratch:
    """The run's private places; a context manager that always cleans up."""

    def __init__(self) -> None:
        if not os.path.isdir(SHM_ROOT):
            raise RuntimeError(f"{SHM_ROOT} is missing: the stores under test live there")
        # mkdtemp makes both 0700, whatever the umask.
        self.shm_dir = tempfile.mkdtemp(prefix="shmfs-bench-", dir=SHM_ROOT)
        self.tmp_dir = tempfile.mkdtemp(prefix="shmfs-bench-")
        self.keys: list[int] = []
        self._closers: list[tuple[str, Callable[[], object]]] = []
        self._serial = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def shm_path(self, stem: str) -> str:
        """A fresh, not yet existing path under the run's ``/dev/shm`` directory."""
        self._serial += 1
        return os.path.join(self.shm_dir, f"{stem}-{self._serial}")

    def tmp_path(self, stem: str) -> str:
        """A fresh, not yet existing path under the run's temp directory."""
        self._serial += 1
        return os.path.join(self.tmp_dir, f"{stem}-{self._serial}")

    def sysv_key(self) -> int:
        """A System V key no segment or semaphore set uses now, remembered for ``close()``."""
        taken = sysv_keys_in_use() | set(self.keys)
        while True:
            key = random.randint(_KEY_LOW, _KEY_HIGH)
            if key not in taken:
                self.keys.append(key)
                return key

    def on_close(self, what: str, closer: Callable[[], object]) -> None:
        """Run ``closer`` at ``close()``, the last registered first."""
        self._closers.append((what, closer))

    def close(self) -> list[str]:
        """Remove everything; return what could not be removed (also printed by the caller)."""
        problems: list[str] = []
        while self._closers:
            what, closer = self._closers.pop()
            try:
                closer()
            except Exception as exc:  # keep cleaning up whatever one closer did
                problems.append(f"closing {what}: {type(exc).__name__}: {exc}")
        for path in (self.shm_dir, self.tmp_dir):
            shutil.rmtree(path, ignore_errors=True)
            if os.path.exists(path):
                problems.append(f"could not remove {path}")
        problems += self._remove_stray_sysv()
        return problems

    def _remove_stray_sysv(self) -> list[str]:
        problems: list[str] = []
        stray = sysv_keys_in_use() & set(self.keys)
        for key in sorted(stray):
            for flag in ("-M", "-S"):  # segment, then semaphore set; one may not exist
                subprocess.run(
                    ["ipcrm", flag, str(key)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    check=False,
                )
        left = sysv_keys_in_use() & set(self.keys)
        if left:
            problems.append("System V keys still present: " + ", ".join(hex(k) for k in left))
        return problems
