"""The machine and software a run measured: printed first, stored in the JSON."""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import shutil
import sqlite3
import subprocess

import shmfs

__all__ = ["describe"]


def _cpu() -> str:
    model = "unknown CPU"
    with (
        contextlib.suppress(OSError),
        open("/proc/cpuinfo", encoding="ascii", errors="replace") as f,
    ):
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} logical CPUs"


def _memory() -> str:
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="ascii") as info:
        for line in info:
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    return "unknown"


def _output(*command: str) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode == 0:
            return done.stdout.strip().splitlines()[0] if done.stdout.strip() else None
    return None


def _package(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _shmfs_source() -> str:
    """Where shmfs was imported from, and its git commit when that is a checkout."""
    folder = os.path.dirname(os.path.dirname(os.path.abspath(shmfs.__file__)))
    commit = _output("git", "-C", folder, "rev-parse", "--short", "HEAD")
    dirty = _output("git", "-C", folder, "status", "--porcelain", "--", "shmfs")
    return f"{shmfs.__version__} from {folder}" + (
        f" @ {commit}{' (modified)' if dirty else ''}" if commit else ""
    )


def describe() -> dict[str, str]:
    """Field -> value, in the order the report prints them."""
    shm = os.statvfs("/dev/shm") if os.path.isdir("/dev/shm") else None
    redis_server = _output("redis-server", "--version")
    php = _output("php", "-r", "echo PHP_VERSION;")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "date (UTC)": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "CPU": _cpu(),
        "memory": _memory(),
        "/dev/shm": f"{shm.f_blocks * shm.f_frsize / 2**30:.1f} GiB tmpfs" if shm else "missing",
        "kernel": f"{platform.system()} {platform.release()}",
        "load average at start": f"{load} (1, 5, 15 min; other work on the machine adds noise)",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "shmfs": _shmfs_source(),
        "cloudpickle / portalocker": f"{_package('cloudpickle')} / {_package('portalocker')}",
        "lmdb (py-lmdb)": _package("lmdb"),
        "diskcache": _package("diskcache"),
        "redis-py": _package("redis"),
        "redis-server": redis_server.split()[2] if redis_server else "not installed",
        "SQLite": sqlite3.sqlite_version,
        "PHP": php or "not installed",
        "matplotlib": _package("matplotlib"),
    }
