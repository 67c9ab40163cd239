"""Sidecar reader: prints each status the writer publishes, as it is published."""

from __future__ import annotations

import json
import os

import shmfs

KEY = int(os.environ.get("SHMFS_KEY", "987654"))

with shmfs.attach(KEY, 1 << 20, codec="json") as seg:
    for status in seg.watch(2):
        print(json.dumps(status), flush=True)
