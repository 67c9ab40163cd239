"""Sidecar writer: publishes a heartbeat counter and a status dict every second."""

from __future__ import annotations

import os
import time

import shmfs

KEY = int(os.environ.get("SHMFS_KEY", "987654"))

with shmfs.attach(KEY, 1 << 20, codec="json") as seg:
    while True:
        beat = seg.incr(1)
        seg[2] = {"beat": beat, "pid": os.getpid(), "time": time.time()}
        time.sleep(1)
