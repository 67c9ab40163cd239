"""The ``shmfs`` command's options and subcommands."""

from __future__ import annotations

import argparse
import pwd
from typing import Any

from shmfs.cli.doctor import version_line

__all__ = ["DEFAULT_KEY", "DEFAULT_SIZE", "build_parser"]

DEFAULT_KEY = 987654  # the article's key
DEFAULT_SIZE = 1024  # the article's size


def _uid(text: str) -> int:
    """A ``--trust-uid`` value: a numeric uid or a user name."""
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise argparse.ArgumentTypeError(f"no user named {text!r}") from None


class _Version(argparse.Action):
    """``--version``: argparse's own action would rewrap the line to the terminal's width."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print(version_line())
        parser.exit()


def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Add the shared options; below the top level they default to "not given" so that a
    value given before the subcommand is not overwritten by the subparser's default."""

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    parser.add_argument("--key", type=int, default=default(DEFAULT_KEY), help="segment key")
    parser.add_argument(
        "--size", type=int, default=default(DEFAULT_SIZE), help="bytes, when creating"
    )
    parser.add_argument(
        "--backend",
        default=default(None),
        help="tmpfs, sysv or redis (default: $SHMFS_BACKEND, else tmpfs); narrows ls",
    )
    parser.add_argument("--root", default=default(None), help="where segments live")
    parser.add_argument(
        "--codec", default=default(None), help="value codec for send (json parses VALUE)"
    )
    parser.add_argument(
        "--trust-uid",
        dest="trust_uids",
        type=_uid,
        action="append",
        default=default(None),
        metavar="UID",
        help="also trust this user (uid or name) as owner and writer; repeatable",
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of the whole command line."""
    parser = argparse.ArgumentParser(
        prog="shmfs", description="A cross-process key-value store in shared memory."
    )
    parser.add_argument(
        "--version",
        action=_Version,
        nargs=0,
        help="print the version and whether the C fast path is on (and why not)",
    )
    _common(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        _common(sub, top=False)
        return sub

    send = command("send", "store VALUE at INDEX (a string; parsed as JSON with --codec json)")
    send.add_argument("index", type=int, metavar="INDEX")
    send.add_argument("value", metavar="VALUE")
    get = command("get", "print the value at INDEX")
    get.add_argument("index", type=int, metavar="INDEX")
    command("delete", "remove the segment and wipe its data (PHP: shm_remove)")
    command("ls", "list the segments of every local backend (--backend: of that one)")
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
    check = commands.add_parser(
        "check",
        help="verify every byte the segments --key or KEY... hold; --repair mends them",
        description=(
            "Verify everything a segment holds: metadata, index, each value's frame and "
            "checksum, and the bookkeeping (tmpfs: slots, free lists, counts, stray files; "
            "sysv: PHP's header and chunk chain; redis: each value's frame). With --repair, "
            "rebuild what the other bytes determine and drop, listing them, the variables "
            "that cannot be recovered, leaving a segment that checks clean."
        ),
        epilog=(
            "exit status: 0 clean (nothing found, or repaired with no variable lost); "
            "1 damage found and left as it is (no --repair); "
            "2 repaired with variables dropped, or could not be checked or repaired"
        ),
    )
    _common(check, top=False)
    check.add_argument("keys", type=int, nargs="*", metavar="KEY")
    check.add_argument("--repair", action="store_true", help="mend what is found")
    command("doctor", "print what decides shmfs's behaviour on this machine")
    command("bench", "run the quick benchmark (python -m bench --quick), from a source checkout")
    return parser
