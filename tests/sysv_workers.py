"""Child-process targets of the sysv journal tests (a module of their own, so that they import
in a spawned child too)."""

from __future__ import annotations

from typing import Any

import shmfs
from shmfs.backends.sysv.journal import Unjournalled

#: The variables after index 1 in the chain, so that each replace of index 1 moves them all.
TAIL = {index: chr(ord("A") + index) * (900 + 291 * index) for index in range(2, 40)}


def lengths() -> Any:
    """The lengths index 1 cycles through: every other one under 100 bytes (a chunk the next
    replace cuts through the journal's buffer), the others up to 9001 (cut in steps of their
    own size), so both kinds of compaction step are killed."""
    length = 1
    while True:
        yield length
        yield length % 97 + 1
        length = length * 7 % 9001 + 1


def replace_forever(key: int, started: Any, journalled: bool, codec: str) -> None:
    """Rewrite index 1 (first in the chain: every replace compacts the whole tail), remove and
    re-add index 39, until killed. ``journalled=False`` is the negative control: the same
    changes as PHP makes them, with no journal. With a pickling ``codec`` the puts go through
    the C fast path where it is built."""
    with shmfs.attach(key, backend="sysv", codec=codec) as seg:
        if not journalled:
            backend: Any = seg._backend  # the control reaches in on purpose: no public switch
            backend._journal = Unjournalled(backend._buf, backend._words, backend._journal.seed)
        for length in lengths():
            seg[1] = "x" * length
            started.set()
            del seg[39]
            seg[39] = TAIL[39]
