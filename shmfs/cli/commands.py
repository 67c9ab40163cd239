"""One function per ``shmfs`` subcommand: each takes the parsed options and returns its output."""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import shmfs
from shmfs.backends import backend_name
from shmfs.cli import doctor, locate, show
from shmfs.errors import SerializationError, ShmfsError
from shmfs.forking import pid_alive

__all__ = ["COMMANDS", "parse_value"]


def parse_value(text: str, codec: str | None) -> Any:
    """VALUE as ``send`` stores it: JSON parsed with the ``json`` codec (so ``5`` is a number
    that ``incr`` can add to), bytes with ``raw``, the string itself with the others.

    Raises:
        SerializationError: VALUE is not JSON, with ``--codec json``.
    """
    if codec == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise SerializationError(
                f"VALUE is not JSON ({exc}); a string needs its quotes: '\"{text}\"'"
            ) from exc
    if codec == "raw":
        return os.fsencode(text)  # the very bytes given on the command line
    return text


def _discard_if_empty(seg: shmfs.Segment) -> None:
    """Remove a segment this ``send`` created and could not fill, unless a value got in."""
    with contextlib.suppress(ShmfsError), seg.lock():
        if len(seg) == 0:
            seg.destroy()


def _send(args: argparse.Namespace) -> str:
    value = parse_value(args.value, args.codec)  # before anything exists to clean up
    name = backend_name(args.backend)
    existed = locate.present(name, args.key, args.root)
    seg = locate.attach(args, codec=args.codec, create=True)
    try:
        seg.put(args.index, value)
    except BaseException:
        if not existed:
            _discard_if_empty(seg)
        raise
    finally:
        seg.detach()
    if args.json:
        return json.dumps({"key": args.key, "index": args.index, "stored": True})
    return f"sent index {args.index} to segment {args.key}"


def _get(args: argparse.Namespace) -> str:
    with locate.attach(args) as seg:
        stored = seg.get(args.index)
    locate.note_elsewhere(args.key, args, f"this is the {seg.backend} segment's value")
    if args.json:
        return json.dumps({"index": args.index, "value": stored}, default=repr)
    return show.value(stored)


def _delete(args: argparse.Namespace) -> str:
    seg = locate.attach(args)
    seg.destroy()
    locate.note_elsewhere(args.key, args, f"removed the {seg.backend} segment only")
    if args.json:
        return json.dumps({"key": args.key, "removed": True})
    return f"removed segment {args.key}"


def _ls(args: argparse.Namespace) -> str:
    found = locate.listing(args)
    return json.dumps(found) if args.json else show.segment_table(found)


def _stat(args: argparse.Namespace) -> str:
    with locate.attach(args) as seg:
        stats = seg.stats()
    locate.note_elsewhere(args.key, args, f"this is the {seg.backend} segment")
    return json.dumps(stats) if args.json else show.stat_lines(stats)


def _rm(args: argparse.Namespace) -> str:
    keys = args.keys or [args.key]
    for key in keys:
        # Not through attach: a segment whose metadata is damaged is removed all the same.
        locate.require(args, key)
        shmfs.destroy(key, backend=args.backend, root=args.root, trust_uids=args.trust_uids)
    if args.json:
        return json.dumps({"removed": keys})
    return "\n".join(f"removed segment {key}" for key in keys)


def _watch(args: argparse.Namespace) -> str:
    # Each value is printed as it comes, so this command writes its own output.
    with locate.attach(args) as seg, seg.watch(args.index, timeout=args.timeout) as values:
        # On stderr, so stdout stays the values alone; from here on no write is missed.
        print(f"watching index {args.index} of segment {args.key}", file=sys.stderr, flush=True)
        for seen, stored in enumerate(values, 1):
            line = json.dumps({"index": args.index, "value": stored}, default=repr)
            print(line if args.json else show.value(stored), flush=True)
            if args.count is not None and seen >= args.count:
                break
    return ""


def _gc(args: argparse.Namespace) -> str:
    """Destroy the abandoned segments the caller owns (root: everyone's). Another user's are
    listed as skipped, and one that cannot be destroyed is listed with why: neither stops the
    others from going."""
    now, euid = time.time(), os.geteuid()
    doomed = [
        info
        for info in shmfs.segments(backend=args.backend, root=args.root)
        if info["created"] is not None
        and now - info["created"] >= args.older_than
        and not pid_alive(info["creator_pid"])
        and not info.get("attached")
    ]
    removed: list[int] = []
    skipped: list[tuple[int, str]] = []
    for info in doomed:
        key, owner = info["key"], info["owner"]
        if euid not in (0, owner):
            skipped.append((key, f"owned by uid {owner}"))
            continue
        if args.dry_run:
            removed.append(key)
            continue
        mine = copy.copy(args)  # destroying reads no value: the owner's files may be trusted
        mine.trust_uids = [*(args.trust_uids or ()), owner]
        try:
            with locate.attach(mine, key=key) as seg:
                seg.destroy()
        except ShmfsError as exc:
            skipped.append((key, str(exc)))
            continue
        removed.append(key)
    if args.json:
        verb = "would_remove" if args.dry_run else "removed"
        report: dict[str, Any] = {verb: removed}
        if skipped:
            report["skipped"] = [{"key": key, "why": why} for key, why in skipped]
        return json.dumps(report)
    verb = "would remove" if args.dry_run else "removed"
    lines = [f"{verb} segment {key}" for key in removed]
    lines += [f"skipped segment {key}: {why}" for key, why in skipped]
    return "\n".join(lines) or "nothing to remove"


def _check(args: argparse.Namespace) -> str:
    keys = args.keys or [args.key]
    reports: list[dict[str, Any]] = []
    for key in keys:
        try:
            report = shmfs.check(
                key,
                repair=args.repair,
                backend=args.backend,
                root=args.root,
                trust_uids=args.trust_uids,
            )
            reports.append(report.as_dict())
        except ShmfsError as exc:  # this key could not be checked; the others still are
            reports.append(show.unchecked(key, backend_name(args.backend), str(exc)))
    args.exit_status = max(report["status"] for report in reports)
    if args.json:
        return json.dumps(reports if len(reports) > 1 else reports[0])
    return "\n".join(show.check_lines(report) for report in reports)


def _doctor(args: argparse.Namespace) -> str:
    facts = doctor.facts(args.backend, args.root)
    return json.dumps(facts, indent=2) if args.json else doctor.report(facts)


def _checkout() -> Path | None:
    """The source checkout shmfs runs from, if it does: ``bench/`` beside the package."""
    top = Path(shmfs.__file__).resolve().parent.parent
    return top if (top / "bench" / "__main__.py").is_file() else None


def _bench(args: argparse.Namespace) -> str:
    del args
    top = _checkout()
    if top is None:
        raise ShmfsError(
            "shmfs bench needs a source checkout (the benchmarks are not installed with the "
            "package): git clone the repository, then pip install -e '.[bench]' && "
            "shmfs bench"
        )
    done = subprocess.run([sys.executable, "-m", "bench", "--quick"], cwd=top, check=False)
    if done.returncode:
        raise ShmfsError(f"python -m bench --quick failed (exit {done.returncode})")
    return ""


COMMANDS: dict[str, Callable[[argparse.Namespace], str]] = {
    "send": _send,
    "get": _get,
    "delete": _delete,
    "ls": _ls,
    "stat": _stat,
    "rm": _rm,
    "watch": _watch,
    "gc": _gc,
    "check": _check,
    "doctor": _doctor,
    "bench": _bench,
}
