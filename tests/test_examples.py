"""The examples run, as users would run them."""

from __future__ import annotations

import json
import os
import re
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


def test_sidecar_image_builds_from_the_checkout() -> None:
    """docker-compose.yml builds examples/sidecar/Dockerfile with the checkout as its context
    (shmfs is not on a package index to pip install by name): every file the Dockerfile
    copies is in that context, and no step installs shmfs from an index."""
    sidecar = EXAMPLES / "sidecar"
    compose = (sidecar / "docker-compose.yml").read_text(encoding="utf-8")
    context = re.search(r"^\s+context: (\S+)$", compose, re.M)
    dockerfile = re.search(r"^\s+dockerfile: (\S+)$", compose, re.M)
    assert context and dockerfile
    top = (sidecar / context[1]).resolve()
    assert (top / "pyproject.toml").is_file() and (top / "shmfs" / "__init__.py").is_file()
    steps = (top / dockerfile[1]).read_text(encoding="utf-8")
    copies = re.findall(r"^COPY (?!--from)(.+) \S+$", steps, re.M)
    assert copies
    for sources in copies:
        for source in sources.split():
            assert (top / source).exists(), source
    for text in (compose, steps, (sidecar / "pod.yaml").read_text(encoding="utf-8")):
        assert not re.search(r"pip install( -\S+)* shmfs\b", text)
