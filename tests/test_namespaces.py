"""Containers, acted out with ``unshare``: what a sidecar in its own IPC or mount namespace sees,
and System V limits lowered inside a throwaway IPC namespace (they are per namespace, so the
host's limits are never touched)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import shmfs

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare"
)


def in_namespace(flags: list[str], script: str, *, shell_prefix: str = "") -> str:
    """Run a Python script in new namespaces; return its stdout (fail on a non-zero exit)."""
    python = f"{sys.executable} -c {_quote(textwrap.dedent(script))}"
    command = ["unshare", *flags, "sh", "-c", f"{shell_prefix}{python}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0 and "unshare failed" in done.stderr:
        pytest.skip(f"namespaces unavailable: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    return done.stdout


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def test_ipc_namespace_shares_tmpfs_but_not_sysv(root: str, key: int) -> None:
    out = in_namespace(
        ["--ipc"],
        f"""
        import os, shmfs
        with shmfs.attach({key}, root={root!r}) as seg:
            seg[1] = "through /dev/shm"
        seg = shmfs.attach({key}, backend="sysv")
        seg[1] = "in the sidecar's IPC namespace"
        print(os.readlink("/proc/self/ns/ipc"))
        """,
    )
    sidecar_namespace = out.strip()
    assert sidecar_namespace != os.readlink("/proc/self/ns/ipc")
    with shmfs.attach(key, root=root) as seg:
        assert seg[1] == "through /dev/shm"  # /dev/shm is not namespaced by --ipc
        seg.destroy()
    # The System V segment died with the namespace, and the CLI says where it looked.
    done = subprocess.run(
        [sys.executable, "-m", "shmfs", "--backend", "sysv", "--key", str(key), "get", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "IPC namespace ipc:[" in done.stderr and "another container" in done.stderr


def test_private_dev_shm_leaks_nothing_to_the_host(key: int) -> None:
    host_root = f"/dev/shm/shmfs-{os.geteuid()}"
    existed = os.path.exists(os.path.join(host_root, str(key)))
    out = in_namespace(
        ["--mount", "--propagation", "private"],
        f"""
        import os, shmfs
        seg = shmfs.attach({key})  # the default root, inside the private /dev/shm
        seg[1] = "private"
        print(seg[1], sorted(os.listdir("/dev/shm")))
        """,
        shell_prefix="mount -t tmpfs -o size=2m tmpfs /dev/shm && ",
    )
    assert out.strip() == f"private ['shmfs-{os.geteuid()}']"
    assert not existed
    assert not os.path.exists(os.path.join(host_root, str(key)))


def test_sysv_limits_give_clear_errors(key: int) -> None:
    out = in_namespace(
        ["--ipc"],
        f"""
        import shmfs
        small = shmfs.attach({key}, 6000, backend="sysv")  # 6000 + 4 KiB > shmmax: no journal
        small[1] = "fits"
        try:
            shmfs.attach({key} + 1, 16384, backend="sysv")
        except shmfs.SegmentFull as exc:
            print("too big:", exc)
        shmfs.attach({key} + 2, 1024, backend="sysv")
        try:
            shmfs.attach({key} + 3, 1024, backend="sysv")
        except shmfs.SegmentFull as exc:
            print("too many:", exc)
        print(small[1])
        """,
        shell_prefix=(
            "echo 8192 > /proc/sys/kernel/shmmax && echo 2 > /proc/sys/kernel/shmmni && "
        ),
    )
    lines = out.strip().splitlines()
    assert lines[0].startswith("too big:") and "kernel.shmmax" in lines[0]
    assert lines[1].startswith("too many:") and "kernel.shmmni" in lines[1]
    assert lines[2] == "fits"
    with open("/proc/sys/kernel/shmmni", encoding="ascii") as host:
        assert int(host.read()) > 2  # the host's limits were never touched
