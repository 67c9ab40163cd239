"""The examples run, as users would run them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import shmfs

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_progress_bar_example(root: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "progress.py")],
        env={**os.environ, "SHMFS_ROOT": root},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "40/40" in done.stdout and done.stdout.rstrip().endswith("finished")


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare"
)
def test_sidecar_example_across_ipc_namespaces(root: str) -> None:
    """The writer runs in its own IPC namespace, as a container would; with a shared
    directory for a volume, the reader still sees every status."""
    env = {**os.environ, "SHMFS_ROOT": root, "SHMFS_KEY": "4242"}
    writer = subprocess.Popen(
        ["unshare", "--ipc", sys.executable, str(EXAMPLES / "sidecar" / "writer.py")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    reader = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "sidecar" / "reader.py")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout is not None
        beats = [json.loads(reader.stdout.readline())["beat"] for _ in range(2)]
        assert beats[1] == beats[0] + 1
    finally:
        for proc in (writer, reader):
            proc.kill()
            proc.communicate(timeout=30)
    shmfs.attach(4242, root=root).destroy()
