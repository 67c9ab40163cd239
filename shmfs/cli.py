"""The ``shmfs`` command: the article's ``send / get / delete`` program, and segment inspection.

    shmfs send 1 "Hello.  This is the shared memory segment."
    shmfs get 1
    shmfs delete

and ``ls``, ``stat``, ``rm``, ``watch INDEX``, ``gc`` and ``bench``.

Common options (``--key``, ``--size``, ``--backend``, ``--root``, ``--codec``, ``--json``) are
accepted before or after the subcommand. Errors print one line to stderr and exit 1; bad usage
exits 2, as argparse does.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import shmfs
from shmfs.backends import backend_class, backend_name
from shmfs.forking import pid_alive

__all__ = ["main"]

DEFAULT_KEY = 987654  # the article's key
DEFAULT_SIZE = 1024  # the article's size


def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Add the shared options; below the top level they default to "not given" so that a
    value given before the subcommand is not overwritten by the subparser's default."""

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    parser.add_argument("--key", type=int, default=default(DEFAULT_KEY), help="segment key")
    parser.add_argument(
        "--size", type=int, default=default(DEFAULT_SIZE), help="bytes, when creating"
    )
    parser.add_argument("--backend", default=default(None), help="tmpfs (default), sysv, redis")
    parser.add_argument("--root", default=default(None), help="where segments live")
    parser.add_argument("--codec", default=default(None), help="value codec for send")
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shmfs", description="A cross-process key-value store in shared memory."
    )
    _common(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        _common(sub, top=False)
        return sub

    send = command("send", "store VALUE (a string) at INDEX")
    send.add_argument("index", type=int, metavar="INDEX")
    send.add_argument("value", metavar="VALUE")
    get = command("get", "print the value at INDEX")
    get.add_argument("index", type=int, metavar="INDEX")
    command("delete", "remove the segment and wipe its data (PHP: shm_remove)")
    command("ls", "list segments")
    command("stat", "describe the segment")
    rm = command("rm", "remove the segments named by --key or KEY...")
    rm.add_argument("keys", type=int, nargs="*", metavar="KEY")
    watch = command("watch", "print each new value of INDEX as it is written (Ctrl-C stops)")
    watch.add_argument("index", type=int, metavar="INDEX")
    watch.add_argument("--timeout", type=float, default=None, help="seconds to wait for each")
    watch.add_argument("--count", type=int, default=None, help="stop after this many values")
    gc = command("gc", "remove segments whose creator is gone and that are old enough")
    gc.add_argument(
        "--older-than", type=float, default=3600.0, metavar="SECONDS", help="default 3600"
    )
    gc.add_argument("--dry-run", action="store_true", help="only say what would go")
    command("bench", "run the quick benchmark (python -m bench --quick)")
    return parser


def _attach(
    args: argparse.Namespace,
    *,
    codec: str | None = None,
    key: int | None = None,
    create: bool = False,
) -> shmfs.Segment:
    """Attach ``--key``; only ``send`` creates, the others report an unknown segment."""
    key = args.key if key is None else key
    backend = backend_class(backend_name(args.backend))
    if not create:
        existing = {info["key"] for info in shmfs.segments(backend=args.backend, root=args.root)}
        if key not in existing:
            raise shmfs.SegmentNotFound(
                f"no segment with key {key} {backend.scope(args.root)}", key=key
            )
    options: dict[str, Any] = {"backend": args.backend, "root": args.root}
    # A backend's native codec (PHP's on sysv) is the default, so PHP reads what send stores.
    native = backend.native_codec
    if codec or native:
        options["codec"] = codec or native
    return shmfs.attach(key, args.size, **options)


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return repr(value)


def _send(args: argparse.Namespace) -> str:
    with _attach(args, codec=args.codec, create=True) as seg:
        seg.put(args.index, args.value)
    if args.json:
        return json.dumps({"key": args.key, "index": args.index, "stored": True})
    return f"sent index {args.index} to segment {args.key}"


def _get(args: argparse.Namespace) -> str:
    with _attach(args) as seg:
        value = seg.get(args.index)
    if args.json:
        return json.dumps({"index": args.index, "value": value}, default=repr)
    return _show(value)


def _delete(args: argparse.Namespace) -> str:
    _attach(args).destroy()
    return (
        json.dumps({"key": args.key, "removed": True})
        if args.json
        else (f"removed segment {args.key}")
    )


def _ls(args: argparse.Namespace) -> str:
    found = shmfs.segments(backend=args.backend, root=args.root)
    if args.json:
        return json.dumps(found)
    lines = [
        f"{'KEY':>12} {'BACKEND':8} {'SIZE':>10} {'USED':>10} {'VARS':>6} {'OWNER':>6} {'AGE':>8}"
    ]
    lines += [
        f"{info['key']:>12} {info['backend']:8} {info['size']:>10} {info['used']:>10} "
        f"{info['variables']:>6} {info['owner']:>6} {_age(info['created']):>8}"
        for info in found
    ]
    return "\n".join(lines)


def _age(created: float | None) -> str:
    if created is None:
        return "-"
    seconds = max(time.time() - created, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _stat(args: argparse.Namespace) -> str:
    with _attach(args) as seg:
        stats = seg.stats()
    if args.json:
        return json.dumps(stats)
    lines = []
    for name, value in stats.items():
        if isinstance(value, dict):  # storage: one line per kind of bytes
            lines += [f"{name}.{part}: {amount}" for part, amount in value.items()]
        elif value is not None:
            lines.append(f"{name}: {oct(value) if name == 'perm' else value}")
    return "\n".join(lines)


def _rm(args: argparse.Namespace) -> str:
    keys = args.keys or [args.key]
    for key in keys:
        _attach(args, key=key).destroy()
    if args.json:
        return json.dumps({"removed": keys})
    return "\n".join(f"removed segment {key}" for key in keys)


def _watch(args: argparse.Namespace) -> str:
    # Each value is printed as it comes, so this command writes its own output.
    with _attach(args) as seg, seg.watch(args.index, timeout=args.timeout) as values:
        # On stderr, so stdout stays the values alone; from here on no write is missed.
        print(f"watching index {args.index} of segment {args.key}", file=sys.stderr, flush=True)
        for seen, value in enumerate(values, 1):
            line = json.dumps({"index": args.index, "value": value}, default=repr)
            print(line if args.json else _show(value), flush=True)
            if args.count is not None and seen >= args.count:
                break
    return ""


def _gc(args: argparse.Namespace) -> str:
    now = time.time()
    doomed = [
        info
        for info in shmfs.segments(backend=args.backend, root=args.root)
        if info["created"] is not None
        and now - info["created"] >= args.older_than
        and not pid_alive(info["creator_pid"])
        and not info.get("attached")
    ]
    for info in doomed:
        if not args.dry_run:
            _attach(args, key=info["key"]).destroy()
    keys = [info["key"] for info in doomed]
    if args.json:
        return json.dumps({"removed" if not args.dry_run else "would_remove": keys})
    verb = "would remove" if args.dry_run else "removed"
    return "\n".join(f"{verb} segment {key}" for key in keys) or "nothing to remove"


def _bench(args: argparse.Namespace) -> str:
    if importlib.util.find_spec("bench") is None:
        return (
            "the benchmarks live in the source repository: clone it, then run "
            "pip install -e '.[bench]' && python -m bench"
        )
    done = subprocess.run([sys.executable, "-m", "bench", "--quick"], check=False)
    if done.returncode:
        raise shmfs.ShmfsError(f"python -m bench --quick failed (exit {done.returncode})")
    return ""


_COMMANDS = {
    "send": _send,
    "get": _get,
    "delete": _delete,
    "ls": _ls,
    "stat": _stat,
    "rm": _rm,
    "watch": _watch,
    "gc": _gc,
    "bench": _bench,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``shmfs`` command line; return the exit status."""
    args = _parser().parse_args(argv)
    try:
        output = _COMMANDS[args.command](args)
    except shmfs.ShmfsError as exc:
        print(f"shmfs: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if output:
        print(output)
    return 0
