"""The ``shmfs`` command: the article's ``send / get / delete`` program, and segment inspection.

    shmfs send 1 "Hello.  This is the shared memory segment."
    shmfs get 1
    shmfs delete

and ``ls``, ``stat``, ``rm``, ``watch INDEX``, ``gc``, ``check``, ``doctor``, ``bench`` and
``--version``.

Common options (``--key``, ``--size``, ``--backend``, ``--root``, ``--codec``, ``--trust-uid``,
``--json``) are accepted before or after the subcommand. Errors print one line to stderr and exit
1; bad usage exits 2, as argparse does; ``check`` has exit statuses of its own (see its help).

The package is split by job: :mod:`~shmfs.cli.parser` (the options), :mod:`~shmfs.cli.locate`
(which backend holds a key, and where else it is), :mod:`~shmfs.cli.commands` (one function per
subcommand), :mod:`~shmfs.cli.show` (how reports read) and :mod:`~shmfs.cli.doctor` (what
decides behaviour on this machine).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from shmfs.cli.commands import COMMANDS
from shmfs.cli.parser import build_parser
from shmfs.errors import CorruptSegment, ShmfsError, UnsafeSegment

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``shmfs`` command line; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        output = COMMANDS[args.command](args)
    except UnsafeSegment as exc:
        # The library's message names the attach() option; here the option is a flag.
        message = str(exc).replace("pass trust_uids= to allow", "pass --trust-uid UID to allow")
        print(f"shmfs: error: {message}", file=sys.stderr)
        return 1
    except CorruptSegment as exc:
        key = getattr(exc, "key", None) or args.key
        print(
            f"shmfs: error: {exc} (`shmfs check --repair {key}` mends what can be mended, "
            f"`shmfs rm {key}` removes the segment)",
            file=sys.stderr,
        )
        return 1
    except ShmfsError as exc:
        print(f"shmfs: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if output:
        try:
            print(output, flush=True)
        except BrokenPipeError:
            # The reader went away (`shmfs ls | head -1`): no traceback, and none at exit either
            # when Python flushes stdout again (the Python docs' recipe, signal module).
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
    return int(getattr(args, "exit_status", 0))  # check's says what it found
