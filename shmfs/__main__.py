"""``python -m shmfs``: the same as the ``shmfs`` command."""

from __future__ import annotations

import sys

from shmfs.cli import main

sys.exit(main())
