"""The values every system stores, by name. ``bench/php.py`` builds the same ones in PHP."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["LABELS", "SMALL", "VALUES", "Picks"]

VALUES: Final[dict[str, Any]] = {
    "str100": "x" * 100,
    "bytes4k": os.urandom(4096),
    "bytes1m": os.urandom(1 << 20),
    "dict": {"user": 42, "name": "alice", "tags": ["a", "b"], "score": 1.5},
}

LABELS: Final[dict[str, str]] = {
    "str100": "100-byte str",
    "bytes4k": "4 KiB bytes",
    "bytes1m": "1 MiB bytes",
    "dict": "small dict",
}

# What the fill curve and the multi-process cases store: the 100-byte str of the targets.
SMALL: Final = "str100"


@dataclass(frozen=True, slots=True)
class Picks:
    """Which indices a timed batch touches: index 1 every time, or uniformly among the
    ``among`` indices ``0 .. among - 1`` (the fill curve), ``count`` of them."""

    count: int
    among: int | None = None
    seed: int = 0

    def indices(self, stream: int = 0) -> list[int]:
        """The batch's indices; each ``stream`` (puts, gets) draws its own sequence, so gets do
        not find exactly the variables the puts just touched still warm in a cache."""
        if self.among is None:
            return [1] * self.count
        rng = random.Random(self.seed * 2 + stream)  # the same sequences for every system
        return [rng.randrange(self.among) for _ in range(self.count)]
