"""The command line, through real subprocesses: ``shmfs ...`` and ``python -m shmfs ...``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

COMMANDS = {
    "script": [shutil.which("shmfs") or "shmfs"],
    "module": [sys.executable, "-m", "shmfs"],
}


@pytest.fixture(params=sorted(COMMANDS))
def run(request: pytest.FixtureRequest, root: str, backend: str):
    base = COMMANDS[request.param]

    def _run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "SHMFS_ROOT": root, "SHMFS_BACKEND": backend}
        return subprocess.run(
            [*base, *args], capture_output=True, text=True, env=env, timeout=60, check=False
        )

    return _run


def test_article_round_trip(run, key: int) -> None:
    sent = run("send", "1", "Hello.  This is the shared memory segment.", "--key", str(key))
    assert sent.returncode == 0, sent.stderr
    got = run("--key", str(key), "get", "1")  # options before the subcommand work too
    assert got.returncode == 0, got.stderr
    assert got.stdout == "Hello.  This is the shared memory segment.\n"
    deleted = run("delete", "--key", str(key))
    assert deleted.returncode == 0, deleted.stderr
    again = run("get", "1", "--key", str(key))
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1 and "no segment" in again.stderr


def test_json_output(run, key: int) -> None:
    assert run("--json", "send", "2", "two", "--key", str(key)).returncode == 0
    got = run("get", "2", "--json", "--key", str(key))
    assert json.loads(got.stdout) == {"index": 2, "value": "two"}
    listed = json.loads(run("ls", "--json").stdout)
    assert [info["key"] for info in listed] == [key]
    stat = json.loads(run("stat", "--json", "--key", str(key)).stdout)
    assert stat["variables"] == 1 and stat["size"] == 1024
    removed = run("rm", str(key), "--json")
    assert removed.returncode == 0 and json.loads(removed.stdout) == {"removed": [key]}
    assert json.loads(run("ls", "--json").stdout) == []


def test_errors_are_one_line_and_non_zero(run, key: int) -> None:
    assert run("send", "1", "x", "--key", str(key)).returncode == 0
    missing = run("get", "7", "--key", str(key))
    assert missing.returncode == 1
    assert missing.stderr.startswith("shmfs: error: ") and missing.stderr.count("\n") == 1
    bad_index = run("get", "seven", "--key", str(key))
    assert bad_index.returncode == 2
    bad_key = run("send", "1", "x", "--key", "0")
    assert bad_key.returncode == 1 and "IPC_PRIVATE" in bad_key.stderr
    too_big = run("send", "1", "y" * 5000, "--key", str(key))
    assert too_big.returncode == 1 and "size=" in too_big.stderr
    assert run("get", "1", "--key", str(key)).stdout == "x\n"  # the failed send kept it
    assert run("delete", "--key", str(key)).returncode == 0
