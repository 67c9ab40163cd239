"""How the ``shmfs`` command's reports read: values, segment descriptions, the ``ls`` table.

People read times and user names; ``--json`` keeps epoch seconds and uids for programs.
"""

from __future__ import annotations

import pwd
import time
from typing import Any

from shmfs.forking import pid_alive

__all__ = [
    "age",
    "check_lines",
    "segment_table",
    "stat_lines",
    "unchecked",
    "user",
    "value",
    "when",
]


def value(stored: Any) -> str:
    """A stored value as ``get`` prints it: strings as they are, bytes decoded, others repr."""
    if isinstance(stored, str):
        return stored
    if isinstance(stored, bytes):
        return stored.decode("utf-8", "backslashreplace")
    return repr(stored)


def user(uid: int) -> str:
    """``name (uid)``, or the bare uid for a user this machine does not know."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} ({uid})"
    except KeyError:
        return str(uid)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def age(created: float | None) -> str:
    """How long ago ``created`` was, in the largest unit that fits (``42s``, ``3h``)."""
    if created is None:
        return "-"
    seconds = max(time.time() - created, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def when(stamp: float) -> str:
    """Local date and time of an epoch ``stamp``, with its zone and its age."""
    local = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(stamp))
    return f"{local} ({age(stamp)} ago)"


def _field(name: str, shown: Any) -> str:
    if name == "perm":
        return f"{shown:#o}"
    if name == "owner":
        return user(shown)
    if name == "created":
        return when(shown)
    if name == "creator_pid":
        return f"{shown} ({'running' if pid_alive(shown) else 'gone'})"
    return str(shown)


def stat_lines(stats: dict[str, Any]) -> str:
    """A segment's ``stats()`` one field a line, times and users readable."""
    lines = []
    for name, shown in stats.items():
        if isinstance(shown, dict):  # storage: one line per kind of bytes
            lines += [f"{name}.{part}: {amount}" for part, amount in shown.items()]
        elif shown is not None:
            lines.append(f"{name}: {_field(name, shown)}")
    return "\n".join(lines)


def segment_table(found: list[dict[str, Any]]) -> str:
    """The ``ls`` table: one segment a line, the backend in a column of its own."""
    head = (
        f"{'KEY':>12} {'BACKEND':8} {'SIZE':>10} {'USED':>10} {'VARS':>6} {'PERM':>5} "
        f"{'OWNER':10} {'AGE':>8}"
    )
    lines = [head]
    lines += [
        f"{info['key']:>12} {info['backend']:8} {info['size']:>10} {info['used']:>10} "
        f"{info['variables']:>6} {info['perm']:>5o} {_user_name(info['owner']):10} "
        f"{age(info['created']):>8}"
        + (f"  DAMAGED: {info['damaged']}" if info.get("damaged") else "")
        for info in found
    ]
    return "\n".join(lines)


def _problem(problem: dict[str, Any]) -> str:
    where = [f"index {problem['index']}"] if problem["index"] is not None else []
    if problem["file"] is not None:
        where.append(problem["file"])
    if problem["offset"] is not None:
        where.append(f"offset {problem['offset']}")
    return f"  {', '.join(where)}: {problem['what']}" if where else f"  {problem['what']}"


def check_lines(report: dict[str, Any]) -> str:
    """What ``shmfs check`` prints for one segment: found, repaired, dropped, left."""
    name = f"segment {report['key']} ({report['backend']})"
    if not report["problems"]:
        return f"{name}: clean"
    lines = [f"{name}: {len(report['problems'])} problem(s) found"]
    lines += [_problem(problem) for problem in report["problems"]]
    if report["repairs"] or report["dropped"]:
        lines += [f"  repaired: {what}" for what in report["repairs"]]
        if report["dropped"]:
            dropped = ", ".join(str(index) for index in report["dropped"])
            lines.append(f"  dropped (could not be recovered): index {dropped}")
        if report["remaining"]:
            lines.append("  still damaged after the repair:")
            lines += ["  " + _problem(problem) for problem in report["remaining"]]
        else:
            lines.append("  the segment now checks clean")
    elif report["remaining"]:
        lines.append("  (run again with --repair to mend it)")
    return "\n".join(lines)


def unchecked(key: int, backend: str, why: str) -> dict[str, Any]:
    """The report of a segment that could not be checked at all (exit status 2)."""
    problem = {"what": f"cannot check it: {why}", "index": None, "file": None, "offset": None}
    return {
        "key": key,
        "backend": backend,
        "clean": False,
        "status": 2,
        "problems": [problem],
        "repairs": [],
        "dropped": [],
        "remaining": [problem],
    }
