"""The command line, through real subprocesses: ``shmfs ...`` and ``python -m shmfs ...``."""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

import shmfs
from shmfs import hotpath
from shmfs.cli import show
from tests.phpbin import run_php

NOBODY = 65534
PACKAGE = Path(shmfs.__file__).resolve().parent

COMMANDS = {
    "script": [shutil.which("shmfs") or "shmfs"],
    "module": [sys.executable, "-m", "shmfs"],
}


# The script is what users type; ``python -m shmfs`` runs the same code, and the round trip
# below checks it on every backend (each command is a fresh interpreter: doubling every test
# for it would double the suite's slowest file for nothing).
@pytest.fixture(params=["script"])
def run(request: pytest.FixtureRequest, where: str, backend: str):
    base = COMMANDS[request.param]

    def _run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "SHMFS_ROOT": where, "SHMFS_BACKEND": backend}
        return subprocess.run(
            [*base, *args], capture_output=True, text=True, env=env, timeout=60, check=False
        )

    return _run


@pytest.mark.parametrize("run", sorted(COMMANDS), indirect=True)
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
        listed = json.loads(run("ls", "--json").stdout)  # every local backend's
        assert [info["key"] for info in listed if info["backend"] == backend] == [key + 1]
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


def cli(*args: str, root: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m shmfs ARGS`` with ``root`` for tmpfs and no backend chosen in the
    environment, as a user who never set SHMFS_BACKEND runs it."""
    base = {k: v for k, v in os.environ.items() if k not in ("SHMFS_BACKEND", "SHMFS_ROOT")}
    return subprocess.run(
        [sys.executable, "-m", "shmfs", *args],
        env={**base, "SHMFS_ROOT": root, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# The article's program, as PHP runs it: shm_attach with 0666 and a put (on the key it is given).
ARTICLE_SEND = """<?php
$segment = shm_attach((int) $argv[1], 1024, 0666);
shm_put_var($segment, (int) $argv[2], $argv[3]);
echo "Message sent to shared memory segment.\\n";
"""


@pytest.mark.php
def test_get_stat_delete_point_to_the_php_segment(root: str, key: int) -> None:
    done = run_php(ARTICLE_SEND, str(key), "1", "Hello from PHP")
    assert done.returncode == 0, done.stderr
    try:
        for command in (["get", "1"], ["stat"], ["delete"]):
            missed = cli(*command, "--key", str(key), root=root)
            assert missed.returncode == 1 and missed.stderr.count("\n") == 1
            assert f"no segment with key {key}" in missed.stderr
            assert "a sysv segment with that key exists" in missed.stderr
            assert "--backend sysv" in missed.stderr
        found = cli("--backend", "sysv", "get", "1", "--key", str(key), root=root)
        assert found.returncode == 0 and found.stdout == "Hello from PHP\n"
        # With a tmpfs segment of that key too, its value comes with a pointer to the other.
        assert cli("send", "1", "stale", "--key", str(key), root=root).returncode == 0
        both = cli("get", "1", "--key", str(key), root=root)
        assert both.stdout == "stale\n" and "--backend sysv" in both.stderr
        removed = cli("delete", "--key", str(key), root=root)
        assert removed.returncode == 0 and "sysv segment with that key exists" in removed.stderr
        assert cli("get", "1", "--key", str(key), root=root).returncode == 1
    finally:
        assert cli("--backend", "sysv", "delete", "--key", str(key), root=root).returncode == 0


def test_a_tmpfs_key_is_pointed_to_from_sysv(root: str, key: int) -> None:
    assert cli("send", "1", "here", "--key", str(key), root=root).returncode == 0
    missed = cli("--backend", "sysv", "get", "1", "--key", str(key), root=root)
    assert missed.returncode == 1 and "--backend tmpfs" in missed.stderr
    assert cli("delete", "--key", str(key), root=root).returncode == 0


@pytest.mark.php
def test_ls_lists_every_local_backend(root: str, key: int) -> None:
    done = run_php(ARTICLE_SEND, str(key + 1), "1", "php")
    assert done.returncode == 0, done.stderr
    try:
        assert cli("send", "1", "x", "--key", str(key), root=root).returncode == 0
        listed = json.loads(cli("ls", "--json", root=root).stdout)
        ours = {(info["key"], info["backend"]) for info in listed if info["key"] in (key, key + 1)}
        assert ours == {(key, "tmpfs"), (key + 1, "sysv")}
        table = cli("ls", root=root).stdout.splitlines()
        assert table[0].split()[:2] == ["KEY", "BACKEND"]
        rows = {line.split()[0]: line.split() for line in table[1:]}
        assert rows[str(key)][1] == "tmpfs" and rows[str(key + 1)][1] == "sysv"
        # PHP's 0666 shows as 666 (it used to be read as decimal: 154).
        assert rows[str(key + 1)][5] == "666"
        for narrowed in ("tmpfs", "sysv"):
            only = json.loads(cli("--backend", narrowed, "ls", "--json", root=root).stdout)
            assert {info["backend"] for info in only} == {narrowed}
    finally:
        assert cli("delete", "--key", str(key), root=root).returncode == 0
        assert cli("--backend", "sysv", "delete", "--key", str(key + 1), root=root).returncode == 0


@pytest.mark.parametrize("perm", [0o600, 0o640, 0o666])
def test_sysv_segments_report_their_perm(key: int, perm: int) -> None:
    with shmfs.attach(key, 1024, perm, backend="sysv") as seg:
        try:
            assert seg.stats()["perm"] == perm
            listed = shmfs.segments(backend="sysv")
            assert [info["perm"] for info in listed if info["key"] == key] == [perm]
        finally:
            seg.destroy()


@pytest.mark.skipif(os.geteuid() != 0, reason="gives files to another user: needs root")
def test_trust_uid_reaches_another_users_root_and_segment(root: str, key: int) -> None:
    theirs = os.path.join(root, "theirs")
    os.mkdir(theirs, 0o700)
    try:
        assert cli("send", "1", "their value", "--key", str(key), root=theirs).returncode == 0
        for directory, _, files in os.walk(theirs):
            for name in [directory, *(os.path.join(directory, f) for f in files)]:
                os.chown(name, NOBODY, NOBODY)
        refused = cli("get", "1", "--key", str(key), root=theirs)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1
        assert "uid 65534" in refused.stderr and "--trust-uid" in refused.stderr
        for who in ("65534", "nobody"):
            got = cli("--trust-uid", who, "get", "1", "--key", str(key), root=theirs)
            assert got.returncode == 0, got.stderr
            assert got.stdout == "their value\n"
        removed = cli("delete", "--key", str(key), "--trust-uid", "nobody", root=theirs)
        assert removed.returncode == 0, removed.stderr
    finally:
        shutil.rmtree(theirs)


def test_a_failed_send_leaves_nothing(run, where: str, backend: str, key: int) -> None:
    too_big = run("send", "1", "y" * 5000, "--size", "1024", "--key", str(key))
    assert too_big.returncode == 1 and "size=" in too_big.stderr
    bad_json = run("send", "1", "not json", "--codec", "json", "--key", str(key + 1))
    assert bad_json.returncode == 1 and "not JSON" in bad_json.stderr
    listed = json.loads(run("--backend", backend, "ls", "--json").stdout)
    assert [info["key"] for info in listed if info["key"] in (key, key + 1)] == []
    if backend != "redis":
        # sysv lists the machine's whole namespace, where tests running alongside keep theirs
        listed = shmfs.segments(backend=backend, root=where)
        assert [info for info in listed if backend == "tmpfs" or info["key"] - key in (0, 1)] == []


def test_send_parses_value_with_the_codec(run, where: str, backend: str, key: int) -> None:
    assert run("send", "--codec", "json", "2", "5", "--key", str(key)).returncode == 0
    assert (
        run("send", "3", '{"a": [1, 2.5, null]}', "--codec", "json", "--key", str(key)).returncode
        == 0
    )
    assert run("send", "4", "5", "--key", str(key)).returncode == 0  # no codec: a string
    with shmfs.attach(key, backend=backend, root=where) as seg:
        assert seg.incr(2) == 6
        assert seg[3] == {"a": [1, 2.5, None]}
        assert seg[4] == "5"
    got = json.loads(run("get", "3", "--json", "--key", str(key)).stdout)
    assert got == {"index": 3, "value": {"a": [1, 2.5, None]}}
    assert run("delete", "--key", str(key)).returncode == 0


def test_stat_reads_as_times_and_names(run, key: int) -> None:
    assert run("send", "1", "x", "--key", str(key)).returncode == 0
    lines = dict(line.split(": ", 1) for line in run("stat", "--key", str(key)).stdout.splitlines())
    user = show.user(os.geteuid())
    assert lines["owner"] == user and "(" in user
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+ \(\d+s ago\)", lines["created"])
    assert lines["perm"] == "0o600"
    raw = json.loads(run("stat", "--json", "--key", str(key)).stdout)
    assert raw["owner"] == os.geteuid() and isinstance(raw["created"], float)
    assert raw["perm"] == 0o600
    assert run("delete", "--key", str(key)).returncode == 0


def installed_elsewhere(tmp_path: Path) -> Path:
    """A copy of the package alone, as a wheel installs it: no source checkout around it, and
    no C module (as when the build had no compiler)."""
    site = tmp_path / "site"
    shutil.copytree(PACKAGE, site / "shmfs", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    return site


def test_bench_outside_a_checkout_fails_clearly(tmp_path: Path) -> None:
    site = installed_elsewhere(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "shmfs", "bench"],
        cwd=site,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("shmfs: error: shmfs bench needs a source checkout")
    assert done.stderr.count("\n") == 1 and done.stdout == ""


def test_version_says_whether_the_c_fast_path_is_on(tmp_path: Path) -> None:
    def version(*options: str, **env: str) -> str:
        done = subprocess.run(
            [sys.executable, *options, "-m", "shmfs", "--version"],
            cwd=tmp_path,  # -m puts the working directory first on the path
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("\n") == 1
        assert done.stdout.startswith(f"shmfs {shmfs.__version__} (Python ")
        return done.stdout

    if hotpath.available():
        assert version().rstrip().endswith("C fast path: on")
    assert "C fast path: off (SHMFS_PURE_PYTHON is set" in version(SHMFS_PURE_PYTHON="1")
    # -S: no .pth files, so no editable install's finder supplies the checkout's C module;
    # the dependencies come from site-packages on the path.
    path = [str(installed_elsewhere(tmp_path)), *site.getsitepackages()]
    without = version("-S", PYTHONPATH=os.pathsep.join(path))
    assert "C fast path: off (shmfs._hot was not built" in without
    assert "gcc python3-dev zlib1g-dev" in without


def test_doctor_reports_what_decides_behaviour(root: str, redis_url: str) -> None:
    done = cli("doctor", "--json", root=root, SHMFS_REDIS_URL=redis_url)
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    assert facts["root"]["path"] == root and facts["root"]["exists"]
    assert facts["root"]["filesystem"] == "tmpfs" and facts["root"]["mode"] == 0o700
    vfs = os.statvfs("/dev/shm")
    assert facts["dev_shm"]["size"] == vfs.f_blocks * vfs.f_frsize
    assert 0 < facts["dev_shm"]["free"] <= facts["dev_shm"]["size"]
    for name in ("vm/max_map_count", "kernel/shmmax", "kernel/shmmni"):
        with open(f"/proc/sys/{name}", encoding="ascii") as value:
            assert facts[name.replace("/", ".")] == int(value.read())
    assert facts["ipc_namespace"] == os.readlink("/proc/self/ns/ipc")
    assert facts["c_fast_path"] is hotpath.available()
    if shutil.which("php") or os.environ.get("CI"):
        assert facts["php"]["found"]
        assert facts["php"]["reply"].endswith("sysvshm=yes sysvsem=yes")
    assert facts["redis"]["server"] == "reachable"
    unreachable = cli("doctor", "--json", root=root, SHMFS_REDIS_URL="unix:///nonexistent.sock")
    assert json.loads(unreachable.stdout)["redis"]["server"].startswith("unreachable")
    human = cli("doctor", root=root, SHMFS_REDIS_URL=redis_url, SHMFS_PURE_PYTHON="1")
    assert human.returncode == 0, human.stderr
    assert f"tmpfs root:       {root} (owner uid" in human.stdout
    assert "IPC namespace:    ipc:[" in human.stdout
    assert "note: the C fast path is off: SHMFS_PURE_PYTHON is set" in human.stdout


def test_output_into_a_closed_pipe_is_quiet(root: str) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "shmfs", "--backend", "tmpfs", "ls"],
        env={**os.environ, "SHMFS_ROOT": root},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as listing:
        assert listing.stdout is not None and listing.stderr is not None
        listing.stdout.close()  # as `| head -0` would, before anything is written
        assert listing.wait(60) == 1
        assert listing.stderr.read() == b""


def _damage_slot(root: str, key: int, index: int) -> None:
    """Flip two payload bytes of a small value's frame (docs/tmpfs-format.md)."""
    from tests.tmpfs_files import pwrite, slot_of  # noqa: PLC0415

    with shmfs.attach(key, root=root) as seg:
        path, offset, _ = slot_of(seg, index)
    pwrite(path, b"\xff\xfe", offset + 16 + 30)


def test_check_exit_status_says_clean_damaged_or_repaired_with_losses(root: str, key: int) -> None:
    assert (
        cli("send", "1", "first value, damaged below", "--key", str(key), root=root).returncode == 0
    )
    assert cli("send", "2", "second value, kept", "--key", str(key), root=root).returncode == 0
    clean = cli("check", str(key), root=root)
    assert (clean.returncode, clean.stdout) == (0, f"segment {key} (tmpfs): clean\n")
    _damage_slot(root, key, 1)
    found = cli("check", str(key), root=root)
    assert found.returncode == 1, found.stderr
    assert "index 1" in found.stdout and "checksum" in found.stdout and "--repair" in found.stdout
    missed = cli("get", "1", "--key", str(key), root=root)
    assert missed.returncode == 1 and f"segment {key} index 1" in missed.stderr
    assert ".slab-" in missed.stderr and "offset" in missed.stderr
    assert f"shmfs check --repair {key}" in missed.stderr and missed.stderr.count("\n") == 1
    repaired = cli("check", "--repair", "--json", str(key), root=root)
    assert repaired.returncode == 2
    report = json.loads(repaired.stdout)
    assert (report["dropped"], report["clean"], report["status"]) == ([1], True, 2)
    assert cli("check", "--key", str(key), root=root).returncode == 0
    assert cli("get", "2", "--key", str(key), root=root).stdout == "second value, kept\n"
    assert cli("rm", str(key), root=root).returncode == 0


def test_check_of_an_unknown_key_exits_2(root: str, key: int) -> None:
    done = cli("check", str(key), root=root)
    assert done.returncode == 2 and f"no segment with key {key}" in done.stdout


def test_check_help_gives_the_exit_statuses(root: str) -> None:
    shown = cli("check", "--help", root=root)
    assert shown.returncode == 0
    text = " ".join(shown.stdout.split())
    assert (
        "0 clean" in text
        and "1 damage found" in text
        and "2 repaired with variables dropped" in text
    )


def test_a_segment_with_damaged_metadata_is_listed_and_removable(root: str, key: int) -> None:
    from tests.tmpfs_files import pwrite  # noqa: PLC0415

    assert cli("send", "1", "x", "--key", str(key), root=root).returncode == 0
    pwrite(os.path.join(root, str(key), ".segment"), b"XXXXXXXX", 0)  # the metadata's magic
    listed = cli("ls", "--backend", "tmpfs", root=root)
    (row,) = [line for line in listed.stdout.splitlines() if line.split()[0] == str(key)]
    assert "DAMAGED" in row and "magic" in row
    assert json.loads(cli("ls", "--backend", "tmpfs", "--json", root=root).stdout)[0]["damaged"]
    removed = cli("rm", str(key), root=root)
    assert removed.returncode == 0, removed.stderr
    assert os.listdir(root) == []


def test_check_on_sysv_repairs_a_damaged_header(root: str, key: int) -> None:
    from shmfs.backends.sysv import ipc  # noqa: PLC0415

    sysv = ("--backend", "sysv", "--key", str(key))
    try:
        assert cli("send", "1", "kept", *sysv, root=root).returncode == 0
        attachment = ipc.Attachment(ipc.shmget(key, 0, 0), 64)
        try:
            attachment.view[32:40] = (1 << 40).to_bytes(8, "little")  # PHP header's total
        finally:
            attachment.detach()
        assert cli("check", *sysv, root=root).returncode == 1
        repaired = cli("check", "--repair", *sysv, root=root)
        assert repaired.returncode == 0 and "now checks clean" in repaired.stdout
        assert cli("get", "1", *sysv, root=root).stdout == "kept\n"
    finally:
        assert cli("rm", *sysv, root=root).returncode == 0
