"""``shmfs doctor`` and ``shmfs --version``: what decides shmfs's behaviour on this machine.

Each fact is one a user would otherwise dig out by hand when something surprises them: where the
tmpfs root is and what filesystem it is on (a root on disk is slow, a small ``/dev/shm`` fills
up: Docker gives 64 MB), the kernel limits that bound mappings and System V segments, the IPC
namespace (a System V segment made in another one is invisible here), and whether PHP and Redis
can be reached. It only reads: nothing is created.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import stat
import subprocess
import urllib.parse
from typing import Any

import shmfs
from shmfs import hotpath
from shmfs.backends import backend_name
from shmfs.backends.redis.url import default_url, redacted
from shmfs.backends.tmpfs.handle import default_root

__all__ = ["facts", "report", "version_line"]

_MIB = 1 << 20
# Docker's default /dev/shm; below it a user will meet SegmentFull soon.
_SMALL_SHM = 64 * _MIB
_PHP_PROBE = (
    'echo PHP_VERSION, " sysvshm=", extension_loaded("sysvshm") ? "yes" : "no", '
    '" sysvsem=", extension_loaded("sysvsem") ? "yes" : "no";'
)


def version_line() -> str:
    """``shmfs X.Y.Z``, the Python it runs on, and whether the C fast path is on (and why
    not)."""
    why_not = hotpath.why_unavailable()
    fast = (
        "on"
        if why_not is None
        else f"off ({why_not}); small tmpfs gets and puts take the slower pure-Python path"
    )
    return f"shmfs {shmfs.__version__} (Python {platform.python_version()}); C fast path: {fast}"


def _sysctl(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as value:
            return int(value.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _unescape(field: str) -> str:
    """A mountinfo path: spaces and the like are written as octal escapes (proc(5))."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match[1], 8)), field)


def _mount_of(path: str) -> tuple[str, str]:
    """The mount point holding ``path`` and its filesystem type, from /proc/self/mountinfo."""
    best = ("/", "unknown")
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as table:
            rows = table.read().splitlines()
    except OSError:
        return best
    for row in rows:
        fields, _, tail = row.partition(" - ")
        point = _unescape(fields.split()[4])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]) and tail:
            best = (point, tail.split()[0])
    return best


def _existing(path: str) -> str:
    """``path``, or its nearest ancestor that exists (a root is made on first attach)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and path != "/":
        path = os.path.dirname(path)
    return os.path.realpath(path)


def _space(path: str) -> dict[str, Any]:
    try:
        vfs = os.statvfs(path)
    except OSError as exc:
        return {"error": str(exc)}
    return {"size": vfs.f_blocks * vfs.f_frsize, "free": vfs.f_bavail * vfs.f_frsize}


def _root(root: str | None) -> dict[str, Any]:
    path = root if root and "://" not in root else default_root()
    found: dict[str, Any] = {"path": path, "exists": os.path.isdir(path)}
    if found["exists"]:
        st = os.stat(path, follow_symlinks=False)
        found.update(owner=st.st_uid, mode=stat.S_IMODE(st.st_mode))
    point, kind = _mount_of(_existing(path))
    found.update(mount=point, filesystem=kind, **_space(_existing(path)))
    return found


def _php() -> dict[str, Any]:
    path = shutil.which("php")
    if path is None:
        return {"found": False}
    try:
        done = subprocess.run(
            [path, "-r", _PHP_PROBE], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"found": True, "path": path, "error": str(exc)}
    return {"found": True, "path": path, "reply": done.stdout.strip() or done.stderr.strip()}


def _redis_ping(url: str) -> str:
    """Send PING (RESP, as redis-cli would) and say what came back; no client package needed."""
    parts = urllib.parse.urlsplit(url)
    try:
        if parts.scheme == "unix":
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.settimeout(2)
            conn.connect(parts.path)
        elif parts.scheme == "redis":
            conn = socket.create_connection((parts.hostname or "localhost", parts.port or 6379), 2)
        else:
            return f"not checked ({parts.scheme}:// is not probed)"
        with conn:
            conn.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = conn.recv(64).decode("ascii", "replace").strip()
    except OSError as exc:
        return f"unreachable ({exc})"
    if reply == "+PONG":
        return "reachable"
    return f"reachable, answered {reply!r}" if reply else "unreachable (no answer)"


def _ipc_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/ipc")
    except OSError as exc:
        return f"unknown ({exc.strerror})"


def _sysv_in_use() -> int | None:
    try:
        with open("/proc/sysvipc/shm", encoding="ascii") as table:
            return len(table.readlines()) - 1
    except OSError:
        return None


def facts(backend: str | None, root: str | None) -> dict[str, Any]:
    """Everything ``shmfs doctor`` reports, as plain data (``--json`` prints it as is)."""
    url = root if root and "://" in root else default_url()
    try:
        import redis  # noqa: F401, PLC0415  # only whether the optional client is there
    except ImportError:
        client = False
    else:
        client = True
    return {
        "version": shmfs.__version__,
        "python": platform.python_version(),
        "c_fast_path": hotpath.available(),
        "c_fast_path_off_because": hotpath.why_unavailable(),
        "backend": backend_name(backend),
        "root": _root(root),
        "dev_shm": {"path": "/dev/shm", **_space("/dev/shm")},
        "vm.max_map_count": _sysctl("/proc/sys/vm/max_map_count"),
        "kernel.shmmax": _sysctl("/proc/sys/kernel/shmmax"),
        "kernel.shmall": _sysctl("/proc/sys/kernel/shmall"),
        "kernel.shmmni": _sysctl("/proc/sys/kernel/shmmni"),
        "sysv_segments": _sysv_in_use(),
        "ipc_namespace": _ipc_namespace(),
        "php": _php(),
        "redis": {"url": redacted(url), "client": client, "server": _redis_ping(url)},
    }


def _bytes(amount: int | None) -> str:
    if amount is None:
        return "unknown"
    if amount >= 1 << 60:
        return "unlimited"
    return f"{amount / _MIB:,.1f} MiB" if amount >= _MIB else f"{amount:,} bytes"


def _pages(amount: int | None) -> str:
    if amount is None:
        return "unknown"
    return "unlimited" if amount >= 1 << 50 else f"{amount:,} pages"


def _warnings(found: dict[str, Any]) -> list[str]:
    said = []
    if not found["c_fast_path"]:
        said.append(f"the C fast path is off: {found['c_fast_path_off_because']}")
    if found["root"]["filesystem"] not in ("tmpfs", "ramfs"):
        said.append(
            f"the root is on {found['root']['filesystem']}, not tmpfs: segments are on disk "
            "(set SHMFS_ROOT or --root to a directory under /dev/shm)"
        )
    if found["dev_shm"].get("size", _SMALL_SHM + 1) <= _SMALL_SHM:
        said.append(
            "/dev/shm is 64 MB or less (Docker's default): raise it with docker run "
            "--shm-size=256m, or a Kubernetes emptyDir sizeLimit"
        )
    if not found["php"]["found"]:
        said.append("php is not installed: PHP interop needs php-cli with sysvshm and sysvsem")
    elif "sysvshm=no" in found["php"].get("reply", "") or "sysvsem=no" in found["php"].get(
        "reply", ""
    ):
        said.append("php lacks sysvshm or sysvsem: it cannot share segments with shmfs")
    return said


def report(found: dict[str, Any]) -> str:
    """``found`` as lines for people: one fact a line, then what deserves attention."""
    root = found["root"]
    where = (
        f"{root['path']} (owner uid {root['owner']}, mode {root['mode']:04o})"
        if root["exists"]
        else f"{root['path']} (not created yet: the first attach makes it, mode 0700)"
    )
    shm = found["dev_shm"]
    fast = "on" if found["c_fast_path"] else f"off ({found['c_fast_path_off_because']})"
    php = found["php"]
    redis = found["redis"]
    lines = [
        f"shmfs:            {found['version']} on Python {found['python']}",
        f"C fast path:      {fast}",
        f"backend:          {found['backend']} (--backend, else $SHMFS_BACKEND, else tmpfs)",
        f"tmpfs root:       {where}",
        f"  filesystem:     {root['filesystem']} mounted at {root['mount']}, "
        f"{_bytes(root.get('free'))} free of {_bytes(root.get('size'))}",
        f"/dev/shm:         {_bytes(shm.get('size'))}, {_bytes(shm.get('free'))} free",
        f"vm.max_map_count: {found['vm.max_map_count']} (a process maps at most half of it)",
        f"kernel.shmmax:    {_bytes(found['kernel.shmmax'])} (largest System V segment)",
        f"kernel.shmall:    {_pages(found['kernel.shmall'])} (all System V segments together)",
        f"kernel.shmmni:    {found['kernel.shmmni']} segments at most, "
        f"{found['sysv_segments']} in use",
        f"IPC namespace:    {found['ipc_namespace']} (System V segments are seen only here)",
        "php:              "
        + (f"{php['path']}: {php.get('reply') or php.get('error')}" if php["found"] else "none"),
        f"redis:            {redis['url']}: {redis['server']}"
        + ("" if redis["client"] else " (the redis package is not installed: shmfs[redis])"),
    ]
    said = _warnings(found)
    if said:
        lines += ["", *(f"note: {line}" for line in said)]
    return "\n".join(lines)
