"""``python -m bench [--quick] [--out DIR]``: shmfs against what users would pick instead.

Every system runs in this one process, interleaved value by value, so a noisy machine moves all
of them alike; results are medians (and p99) of per-operation times over many batches, and the
summary states each target of the performance issue as a ratio measured in the same run. Writes
``results.json`` and ``results.png`` (with matplotlib) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import time
import uuid
from typing import Any

import shmfs
from bench import php, processes
from bench.systems import FACTORIES, System, Unavailable
from bench.timing import Timing, measure

VALUES: dict[str, Any] = {
    "str100": "x" * 100,
    "dict": {"user": 42, "name": "alice", "tags": ["a", "b"], "score": 1.5},
    "bytes4k": os.urandom(4096),
    "bytes1m": os.urandom(1 << 20),
}


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def environment() -> dict[str, str]:
    cpu = "unknown cpu"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "shmfs": shmfs.__version__,
    }


def point_ops(quick: bool) -> dict[str, dict[str, dict[str, Timing]]]:
    """get/put medians for every system and value: results[value][system][op]."""
    systems: dict[str, System] = {}
    for name, factory in FACTORIES.items():
        try:
            systems[name] = factory()
        except Unavailable as exc:
            progress(f"{name}: not available ({exc})")
    results: dict[str, dict[str, dict[str, Timing]]] = {}
    try:
        for value_name, value in VALUES.items():
            big = value_name == "bytes1m"
            batch = (10 if big else 300) if quick else (40 if big else 2000)
            batches = 7 if quick else 21
            results[value_name] = {}
            copy_floor = measure(
                lambda v=value: bytes(memoryview(v)[0:]) if isinstance(v, bytes) else None,
                batch=batch,
                batches=batches,
            )
            if isinstance(value, bytes):
                results[value_name]["memcpy (floor)"] = {"get": copy_floor, "put": copy_floor}
            for name, system in systems.items():
                system.put(1, value)
                put = measure(lambda s=system, v=value: s.put(1, v), batch=batch, batches=batches)
                get = measure(lambda s=system: s.get(1), batch=batch, batches=batches)
                results[value_name][name] = {"put": put, "get": get}
                progress(
                    f"{value_name:8} {name:30} get {get.median:9.2f} us  put {put.median:9.2f} us"
                )
    finally:
        for system in systems.values():
            system.close()
    return results


def fill_curve(quick: bool) -> dict[int, float]:
    """Median get (µs) of a random variable among N, on tmpfs, for growing N."""
    sizes = [1, 10, 1000, 10_000] if quick else [1, 10, 1000, 10_000, 100_000]
    root = f"/dev/shm/shmfs-bench-{uuid.uuid4().hex}"
    os.mkdir(root, 0o700)
    curve: dict[int, float] = {}
    try:
        seg = shmfs.attach(0x5EB20, 1 << 30, root=root)
        filled = 0
        for size in sizes:
            for index in range(filled, size):
                seg[index] = "x" * 100
            filled = size
            picks = iter([random.randrange(size) for _ in range(4096)] * 1000)
            curve[size] = measure(lambda p=picks: seg.get(next(p)), batch=500, batches=9).median
            progress(f"fill {size:>7} variables: get {curve[size]:.2f} us")
        seg.destroy()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return curve


def concurrency(quick: bool) -> dict[str, Any]:
    root = f"/dev/shm/shmfs-bench-{uuid.uuid4().hex}"
    os.mkdir(root, 0o700)
    ref = {"key": 0x5EB30, "backend": "tmpfs", "root": root}
    out: dict[str, Any] = {}
    try:
        shmfs.attach(ref["key"], 1 << 20, root=root).detach()
        for readers in (1, 4) if not quick else (1,):
            rates = processes.writer_and_readers(ref, readers, 1.0 if quick else 3.0)
            out[f"writer+{readers} readers"] = rates
            progress(
                f"writer + {readers} reader(s): {rates['put']:,.0f} puts/s, "
                f"{rates['get']:,.0f} gets/s"
            )
        incr = processes.contended_incr(ref, 8, 500 if quick else 3000)
        out["8 processes incr"] = incr
        progress(f"8-process incr: {incr['incr_per_s']:,.0f}/s, exact={bool(incr['exact'])}")
        shmfs.attach(ref["key"], root=root).destroy()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def targets(
    points: dict[str, Any], curve: dict[int, float], conc: dict[str, Any]
) -> list[tuple[str, str, bool]]:
    """The performance issue's targets: (target, measured, met)."""

    def median(value: str, system: str, op: str) -> float | None:
        entry = points.get(value, {}).get(system)
        return entry[op].median if entry else None

    rows: list[tuple[str, str, bool]] = []

    def ratio_row(
        label: str,
        value: str,
        system: str,
        op: str,
        base: str,
        limit: float,
        absolute: float | None = None,
    ) -> None:
        ours, theirs = median(value, system, op), median(value, base, op)
        if ours is None or theirs is None:
            rows.append((label, f"{base} not measured", False))
            return
        ratio = ours / theirs
        met = ratio <= limit and (absolute is None or ours <= absolute)
        rows.append((label, f"{ours:.2f} us = {ratio:.2f}x {base}", met))

    ratio_row(
        "tmpfs get str100 <= 1.0x lmdb, <= 2 us", "str100", "shmfs tmpfs", "get", "lmdb", 1.0, 2.0
    )
    ratio_row(
        "tmpfs put str100 <= 0.5x lmdb, <= 5 us", "str100", "shmfs tmpfs", "put", "lmdb", 0.5, 5.0
    )
    ratio_row(
        "tmpfs get dict <= 3 us and 1/5 of diskcache",
        "dict",
        "shmfs tmpfs",
        "get",
        "diskcache",
        0.2,
        3.0,
    )
    ratio_row(
        "tmpfs put dict <= 6 us and 1/10 of diskcache",
        "dict",
        "shmfs tmpfs",
        "put",
        "diskcache",
        0.1,
        6.0,
    )
    ratio_row(
        "tmpfs get 1 MiB <= 1.5x memcpy", "bytes1m", "shmfs tmpfs", "get", "memcpy (floor)", 1.5
    )
    ratio_row(
        "tmpfs put 1 MiB <= 3x memcpy", "bytes1m", "shmfs tmpfs", "put", "memcpy (floor)", 3.0
    )
    sysv_get, sysv_put = (
        median("str100", "shmfs sysv", "get"),
        median("str100", "shmfs sysv", "put"),
    )
    if sysv_get is not None and sysv_put is not None:
        rows.append(("sysv get str100 <= 5 us", f"{sysv_get:.2f} us (1 variable)", sysv_get <= 5))
        rows.append(("sysv put str100 <= 10 us", f"{sysv_put:.2f} us (1 variable)", sysv_put <= 10))
    if curve:
        largest = max(curve)
        ratio = curve[largest] / curve[min(curve, key=lambda n: abs(n - 10))]
        rows.append(
            (f"get with {largest} variables <= 1.5x with 10", f"{ratio:.2f}x", ratio <= 1.5)
        )
    pair = conc.get("writer+1 readers")
    if pair:
        rows.append(
            ("writer + reader: >= 150k puts/s", f"{pair['put']:,.0f}/s", pair["put"] >= 150e3)
        )
        rows.append(
            ("writer + reader: >= 500k gets/s", f"{pair['get']:,.0f}/s", pair["get"] >= 500e3)
        )
    incr = conc.get("8 processes incr")
    if incr:
        rows.append(
            (
                "8-process incr >= 100k/s, exact",
                f"{incr['incr_per_s']:,.0f}/s, exact={bool(incr['exact'])}",
                incr["incr_per_s"] >= 100e3 and bool(incr["exact"]),
            )
        )
    return rows


def report(
    env: dict[str, str],
    points: dict[str, Any],
    php_times: dict[str, Any] | None,
    curve: dict[int, float],
    conc: dict[str, Any],
    out: str,
) -> None:
    print(
        f"# shmfs benchmark: {env['cpu']}; Linux {env['kernel']}; Python {env['python']}; "
        f"shmfs {env['shmfs']}\n"
    )
    for value, systems in points.items():
        base = systems.get("shmfs tmpfs")
        print(f"## {value}\n")
        print("| system | get µs (p99) | put µs (p99) | get / shmfs tmpfs | put / shmfs tmpfs |")
        print("|---|---|---|---|---|")
        rows = dict(systems)
        for name, ops in rows.items():
            ratio_get = f"{ops['get'].median / base['get'].median:.2f}x" if base else "-"
            ratio_put = f"{ops['put'].median / base['put'].median:.2f}x" if base else "-"
            print(
                f"| {name} | {ops['get'].median:.2f} ({ops['get'].p99:.2f}) | "
                f"{ops['put'].median:.2f} ({ops['put'].p99:.2f}) | {ratio_get} | {ratio_put} |"
            )
        if php_times and value in php_times:
            times = php_times[value]
            print(
                f"| PHP shm_get_var/put_var (in php, no lock) | {times['get']:.2f} | "
                f"{times['put']:.2f} | | |"
            )
        print()
    print("## Fill curve (tmpfs get of a random variable among N)\n")
    print("| N | get µs |\n|---|---|")
    for size, value in curve.items():
        print(f"| {size} | {value:.2f} |")
    print("\n## Several processes (tmpfs)\n")
    for name, value in conc.items():
        print(f"- {name}: " + ", ".join(f"{k} {v:,.0f}" for k, v in value.items()))
    print("\n## Targets\n\n| target | measured | met |\n|---|---|---|")
    for target, measured, met in targets(points, curve, conc):
        print(f"| {target} | {measured} | {'yes' if met else 'NO'} |")
    os.makedirs(out, exist_ok=True)
    data = {
        "environment": env,
        "point_ops": {
            v: {s: {op: vars(t) for op, t in ops.items()} for s, ops in sys_.items()}
            for v, sys_ in points.items()
        },
        "php": php_times,
        "fill_curve": curve,
        "processes": conc,
    }
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as file:
        json.dump(data, file, indent=2)
    _chart(points, os.path.join(out, "results.png"))
    progress(f"wrote {out}/results.json and results.png")


def _chart(points: dict[str, Any], path: str) -> None:
    try:
        import matplotlib  # noqa: PLC0415  # optional: only for the PNG

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        progress("matplotlib not installed: no chart (pip install -e '.[bench]')")
        return
    figure, axes = plt.subplots(1, len(points), figsize=(5 * len(points), 5))
    for axis, (value, systems) in zip(axes, points.items(), strict=True):
        names = [name for name in systems if "floor" not in name or name == "dict (floor)"]
        gets = [systems[name]["get"].median for name in names]
        puts = [systems[name]["put"].median for name in names]
        positions = range(len(names))
        axis.barh([p - 0.2 for p in positions], gets, height=0.4, label="get")
        axis.barh([p + 0.2 for p in positions], puts, height=0.4, label="put")
        axis.set_yticks(list(positions), names, fontsize=8)
        axis.set_xscale("log")
        axis.set_xlabel("µs per operation (log)")
        axis.set_title(value)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs (under a minute)")
    parser.add_argument("--out", default="bench-results", help="where to write JSON and PNG")
    args = parser.parse_args()
    began = time.monotonic()
    env = environment()
    progress(f"{env}")
    points = point_ops(args.quick)
    php_times = php.measure(200 if args.quick else 2000)
    progress("php: " + ("measured" if php_times else "not available (apt-get install php-cli)"))
    curve = fill_curve(args.quick)
    conc = concurrency(args.quick)
    report(env, points, php_times, curve, conc, args.out)
    progress(f"done in {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
