"""The command line, through real subprocesses: ``shmfs ...`` and ``python -m shmfs ...``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

import shmfs

COMMANDS = {
    "script": [shutil.which("shmfs") or "shmfs"],
    "module": [sys.executable, "-m", "shmfs"],
}


@pytest.fixture(params=sorted(COMMANDS))
def run(request: pytest.FixtureRequest, where: str, backend: str):
    base = COMMANDS[request.param]

    def _run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "SHMFS_ROOT": where, "SHMFS_BACKEND": backend}
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
    assert key in [info["key"] for info in listed]
    stat = json.loads(run("stat", "--json", "--key", str(key)).stdout)
    assert stat["variables"] == 1 and stat["size"] == 1024
    removed = run("rm", str(key), "--json")
    assert removed.returncode == 0 and json.loads(removed.stdout) == {"removed": [key]}
    assert key not in [info["key"] for info in json.loads(run("ls", "--json").stdout)]


def test_stat_shows_where_the_bytes_go(run, backend: str, key: int) -> None:
    assert run("send", "1", "x" * 100, "--key", str(key)).returncode == 0
    shown = run("stat", "--key", str(key))
    assert shown.returncode == 0, shown.stderr
    lines = dict(line.split(": ", 1) for line in shown.stdout.splitlines())
    assert lines["variables"] == "1"
    if backend == "tmpfs":  # the one backend whose storage is files it can count
        assert int(lines["storage.slot_bytes_in_use"]) > 100
        assert int(lines["storage.index"]) > 0
    assert run("delete", "--key", str(key)).returncode == 0


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


def test_watch_prints_each_new_value(where: str, backend: str, key: int) -> None:
    root = where
    env = {**os.environ, "SHMFS_ROOT": root, "SHMFS_BACKEND": backend}
    base = [sys.executable, "-m", "shmfs", "--key", str(key)]
    assert subprocess.run([*base, "send", "1", "start"], env=env, check=False).returncode == 0
    with subprocess.Popen(
        [*base, "watch", "1", "--count", "3", "--timeout", "30", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as watcher:
        assert watcher.stdout is not None and watcher.stderr is not None
        try:
            assert watcher.stderr.readline().startswith("watching index 1")  # registered
            seen = []
            with shmfs.attach(key, backend=backend, root=root) as seg:
                for step in range(3):  # each value only after the previous one was printed
                    seg.put(1, f"step {step}")
                    seen.append(json.loads(watcher.stdout.readline()))
            assert watcher.wait(30) == 0
        finally:
            watcher.kill()
    assert seen == [{"index": 1, "value": f"step {step}"} for step in range(3)]
    shmfs.attach(key, backend=backend, root=root).destroy()


def test_gc_removes_only_orphans_old_enough(run, where: str, backend: str, key: int) -> None:
    root = where
    assert run("send", "1", "orphan", "--key", str(key)).returncode == 0  # its creator exits
    live = shmfs.attach(key + 1, backend=backend, root=root)  # created by this live process
    try:
        dry = json.loads(run("gc", "--older-than", "0", "--dry-run", "--json").stdout)
        assert key in dry["would_remove"] and key + 1 not in dry["would_remove"]
        young = json.loads(run("gc", "--older-than", "3600", "--dry-run", "--json").stdout)
        assert key not in young["would_remove"]
        if backend == "sysv":
            # The machine's System V namespace holds other people's segments: a real gc here
            # could remove theirs, so only the dry runs above are checked for sysv.
            assert run("delete", "--key", str(key)).returncode == 0
            return
        assert json.loads(run("gc", "--older-than", "0", "--json").stdout) == {"removed": [key]}
        keys = [info["key"] for info in json.loads(run("ls", "--json").stdout)]
        assert keys == [key + 1]
    finally:
        live.destroy()


def test_ls_shows_age(run, key: int) -> None:
    assert run("send", "1", "x", "--key", str(key)).returncode == 0
    listing = run("ls").stdout.splitlines()
    assert listing[0].split()[-1] == "AGE"
    ours = [line.split() for line in listing[1:] if line.split()[0] == str(key)]
    assert len(ours) == 1 and ours[0][-1].endswith("s")
    assert run("delete", "--key", str(key)).returncode == 0


def test_bench_command_runs_the_quick_benchmark_or_says_how(run) -> None:
    done = run("bench", "--help")
    assert done.returncode == 0 and "quick benchmark" in done.stdout
