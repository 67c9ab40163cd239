"""The results as markdown (stdout), JSON and a PNG chart.

Tables put the targets first, so a reader sees at once what is met; then the detail behind each.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from bench.frameworks import SHMFS_TMPFS
from bench.system import Footprint
from bench.targets import TMPFS, Row, memory_per_variable
from bench.timing import Stats
from bench.values import LABELS

__all__ = ["chart", "markdown", "write_json"]


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _num(us: float) -> str:
    """µs with the digits that matter: 0.052, 2.16, 51.0, 763."""
    if us >= 100:
        return f"{us:,.0f}"
    if us >= 10:
        return f"{us:.1f}"
    if us >= 0.1:
        return f"{us:.2f}"
    return f"{us:.3f}"


def _rate(per_s: float) -> str:
    return f"{per_s / 1e3:,.1f}k" if per_s >= 1e3 else f"{per_s:,.0f}"


def _targets(rows: list[Row]) -> list[str]:
    met = sum(1 for row in rows if row.met and not row.stated)
    goals = sum(1 for row in rows if not row.stated)
    out = [f"## Targets: {met} of {goals} met\n"]
    return out + _table(
        ["target", "measured (medians; ratios from this run)", "met?"],
        [
            [row.target, row.measured, f"**{row.verdict}**" if row.met is False else row.verdict]
            for row in rows
        ],
    )


def _overview(points: dict[str, Any]) -> list[str]:
    results = points["results"]
    values = list(results)
    systems: list[str] = []
    for by_system in results.values():
        systems += [name for name in by_system if name not in systems]
    head = ["system"] + [f"{op} {LABELS[v]}" for v in values for op in ("get", "put")]
    rows = []
    for name in systems:
        cells = []
        for value in values:
            ops = results[value].get(name)
            cells += [_num(ops[op].median) if ops else "—" for op in ("get", "put")]
        bold = name == TMPFS
        rows.append([f"**{name}**" if bold else name] + [f"**{c}**" if bold else c for c in cells])
    return ["## get / put: median µs per call, every system\n", *_table(head, rows)]


def _per_value(points: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for value, by_system in points["results"].items():
        base: dict[str, Stats] | None = by_system.get(TMPFS)
        out.append(f"### {LABELS[value]}: µs per call, median (p99), and ÷ shmfs tmpfs\n")
        rows = []
        for name, ops in by_system.items():
            ratios = [f"{ops[op].ratio(base[op]):.2f}x" if base else "—" for op in ("get", "put")]
            rows.append(
                [
                    name,
                    f"{_num(ops['get'].median)} ({_num(ops['get'].p99)})",
                    f"{_num(ops['put'].median)} ({_num(ops['put'].p99)})",
                    *ratios,
                    str(ops["get"].n),
                ]
            )
        out += _table(
            ["system", "get", "put", "get ÷ tmpfs", "put ÷ tmpfs", "calls timed per op"], rows
        )
        for name, why in points["errors"].get(value, {}).items():
            out.append(f"- {name}: failed: {why}")
        if points["errors"].get(value):
            out.append("")
    return out


def _fill(fill: dict[str, Any]) -> list[str]:
    results: dict[str, dict[int, dict[str, Stats]]] = fill["results"]
    sizes = sorted({n for curve in results.values() for n in curve})
    out: list[str] = []
    for op in ("get", "put"):
        out.append(f"## Fill curve: {op} of a variable drawn uniformly among N, median µs (p99)\n")
        rows = []
        for name, curve in results.items():
            cells = [
                f"{_num(curve[n][op].median)} ({_num(curve[n][op].p99)})" if n in curve else "—"
                for n in sizes
            ]
            if 10 in curve and len(curve) > 1:
                largest = max(curve)
                cells.append(f"{curve[largest][op].ratio(curve[10][op]):.2f}x")
            else:
                cells.append("—")
            rows.append([name, *cells])
        out += _table(["system", *(f"N={n:,}" for n in sizes), "largest N ÷ N=10"], rows)
    for name, why in fill["stopped"].items():
        out.append(f"- {name}: {why}")
    for name, why in fill["errors"].items():
        out.append(f"- {name}: failed: {why}")
    return [*out, ""]


def _scale(scaled: dict[str, Any]) -> list[str]:
    curve = scaled["curve"]["results"]
    rows = [
        [name, f"{size:,}", f"{f['put']:.2f}", f"{f['get']:.2f}", f"{f['bytes']:,.0f}"]
        for name, sizes in curve.items()
        for size, f in sizes.items()
    ]
    lines = [
        "## Scale: 100-byte str variables on one tmpfs (bench/scale.py)",
        "",
        "put: average while filling up to N (one transaction each); get: each of the N read "
        "once in random order; bytes: tmpfs blocks of every file plus the kernel's inode and "
        "dentry per file, per variable.",
        "",
    ]
    lines += _table(["system", "variables", "put µs", "get µs", "bytes/variable"], rows)
    return lines


def _frameworks(frameworks: dict[str, Any] | None) -> list[str]:
    if not frameworks:
        return []
    lines = [
        "## Through the frameworks (bench/frameworks.py)",
        "",
        "`cache.get` (a hit) and `cache.set` of a small dict over 100 keys, by Django's and "
        "cachelib's cache APIs: shmfs's backends (`shmfs.contrib`) against each framework's "
        "own caches; µs, the best round's median (p99), and the ratio to shmfs tmpfs.",
        "",
    ]
    for framework, systems in frameworks["results"].items():
        ours = systems.get(SHMFS_TMPFS)
        rows = []
        for name, ops in systems.items():
            cells = [name]
            for op in ("get", "set"):
                stats = ops[op]
                ratio = f"{stats.ratio(ours[op]):.2f}x" if ours else "—"
                cells += [f"{stats.median:.2f} ({stats.p99:.1f})", ratio]
            rows.append(cells)
        lines += [f"**{framework}**", ""]
        lines += _table(["system", "get µs", "÷ shmfs", "set µs", "÷ shmfs"], rows)
    for name, why in frameworks["unavailable"].items():
        lines.append(f"- {name}: not measured: {why}")
    return [*lines, ""]


def _memory(fill: dict[str, Any]) -> list[str]:
    rows = []
    for name in fill["footprint"]:
        memory = memory_per_variable(fill, name)
        if memory is None:
            continue
        kernel = (
            f"{memory['kernel']:,.0f} ({memory['files']:.2f} files)"
            if memory["kernel"] is not None and memory["files"]
            else "—"
        )
        rows.append(
            [
                name,
                f"{memory['from']:,} → {memory['to']:,}",
                f"{memory['bytes']:,.0f}",
                kernel,
                f"**{memory['total']:,.0f}**",
            ]
        )
    per_file = fill.get("kernel_bytes_per_file")
    note = (
        f"Kernel cost per file: an inode and a dentry, {per_file} B at /proc/slabinfo's object "
        "sizes."
        if per_file
        else "Kernel cost per file: /proc/slabinfo not readable."
    )
    head = ["system", "variables", "own bytes / variable", "kernel bytes / variable", "total"]
    return [
        "## Memory per 100-byte variable (the last fill step)\n",
        *_table(head, rows),
        "Own bytes: allocated file blocks (st_blocks) for stores in files; the used bytes of "
        "PHP's layout for sysv; INFO used_memory for redis. " + note,
        "",
    ]


def _processes(
    pairs: dict[str, Any], incr: dict[str, Any], seconds: float, repeats: int
) -> list[str]:
    each = f"{seconds:g} s each" + (f", median of {repeats} runs" if repeats > 1 else "")
    out = [f"## One writer and R readers, separate processes, one variable ({each})\n"]
    readers = sorted({r for runs in pairs["results"].values() for r in runs})
    rows = []
    for name, runs in pairs["results"].items():
        cells = []
        for r in readers:
            run = runs.get(r)
            if run is None:
                cells.append("—")
            elif run["error"]:
                cells.append(f"failed: {run['error']}")
            else:
                cells.append(f"{_rate(run['puts_per_s'])} / {_rate(run['gets_per_s'])}")
        torn = sum(run["torn_reads"] for run in runs.values())
        rows.append([name, *cells, str(torn)])
    out += _table(
        ["system", *(f"R={r}: puts/s / gets/s" for r in readers), "torn reads (all runs)"], rows
    )
    out.append(f"## N processes incrementing one variable ({each})\n")
    workers = sorted({n for runs in incr["results"].values() for n in runs})
    rows = []
    for name, runs in incr["results"].items():
        cells = []
        for n in workers:
            run = runs.get(n)
            if run is None:
                cells.append("—")
            elif run["error"]:
                cells.append(f"failed: {run['error']}")
            else:
                cells.append(f"{_rate(run['incr_per_s'])}/s" + ("" if run["exact"] else " LOST"))
        exact = all(run["exact"] for run in runs.values())
        rows.append([name, *cells, "yes" if exact else "**NO**"])
    out += _table(["system", *(f"N={n}" for n in workers), "every count exact"], rows)
    out.append(
        "Single-process floors (dict, pickle, memcpy) and PHP (timed inside php) take no part "
        "in the multi-process cases."
    )
    for name, why in incr["unavailable"].items():
        if why == "no atomic increment":
            out.append(f"- {name}: no incr case (no atomic increment)")
    return [*out, ""]


def _availability(points: dict[str, Any]) -> list[str]:
    out = ["## Systems\n"]
    rows = [[name, "measured", note] for name, note in points["notes"].items()]
    rows += [[name, f"not available: {why}", ""] for name, why in points["unavailable"].items()]
    return out + _table(["system", "status", "set-up"], rows)


def markdown(
    env: dict[str, str],
    plan: dict[str, Any],
    rows: list[Row],
    points: dict[str, Any],
    fill: dict[str, Any],
    pairs: dict[str, Any],
    incr: dict[str, Any],
    scaled: dict[str, Any],
    frameworks: dict[str, Any] | None = None,
) -> str:
    """The whole report."""
    lines = ["# shmfs benchmark\n"]
    lines += _table(["", ""], [[key, value] for key, value in env.items()])
    lines += [
        f"Run: {'--quick' if plan['quick'] else 'full'}; {plan['rounds']} interleaved rounds "
        "per value; each call timed alone (perf_counter_ns, the timer's own cost subtracted); "
        "medians and p99 over every call.",
        "",
    ]
    lines += _targets(rows)
    lines += _overview(points)
    lines += _per_value(points)
    lines += _fill(fill)
    lines += _memory(fill)
    lines += _scale(scaled)
    lines += _frameworks(frameworks)
    lines += _processes(pairs, incr, plan["process_seconds"], plan["repeats"])
    lines += _availability(points)
    return "\n".join(lines)


def _plain(obj: Any) -> Any:
    """JSON-ready: Stats and Footprints as dicts, int keys as strings."""
    if isinstance(obj, Stats):
        return obj.as_dict()
    if isinstance(obj, Footprint):
        return {"bytes": obj.bytes, "files": obj.files}
    if isinstance(obj, Row):
        return {"target": obj.target, "measured": obj.measured, "met": obj.verdict}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def write_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as file:
        json.dump(_plain(data), file, indent=1)
        file.write("\n")


def chart(  # one figure, six panels, drawn in order
    path: str,
    points: dict[str, Any],
    fill: dict[str, Any],
    pairs: dict[str, Any],
    incr: dict[str, Any],
    scaled: dict[str, Any],
) -> str | None:
    """Draw the PNG; return why not if matplotlib is missing."""
    try:
        import matplotlib  # noqa: PLC0415  # optional: only for the chart

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return "matplotlib not installed (pip install -e '.[bench]')"
    figure, axes = plt.subplots(3, 3, figsize=(20, 16))
    palette = plt.get_cmap("tab20")
    for axis in axes[1]:
        # Up to 12 lines per panel: the default 10-colour cycle would repeat colours.
        axis.set_prop_cycle(color=[palette(i) for i in range(20)])
    for axis, value in zip(axes[0], ("str100", "dict", "bytes1m"), strict=True):
        by_system = points["results"].get(value, {})
        names = list(by_system)
        positions = range(len(names))
        for shift, op in ((-0.2, "get"), (0.2, "put")):
            axis.barh(
                [p + shift for p in positions],
                [by_system[n][op].median for n in names],
                height=0.4,
                label=op,
            )
        axis.set_yticks(list(positions), names, fontsize=8)
        axis.invert_yaxis()
        axis.set_xscale("log")
        axis.set_xlabel("µs per call, median (log)")
        axis.set_title(LABELS[value])
        axis.legend()
    axis = axes[1][0]
    for name, curve in fill["results"].items():
        if "floor" in name or not curve:
            continue
        sizes = sorted(curve)
        axis.plot(
            sizes,
            [curve[n]["get"].median for n in sizes],
            marker="o",
            label=name,
            linewidth=3 if name == TMPFS else 1.2,
        )
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("variables in the store")
    axis.set_ylabel("get µs, median (log)")
    axis.set_title("fill curve: get of a random variable among N")
    axis.legend(fontsize=7)
    for axis, data, key, title, xlabel in (
        (axes[1][1], pairs, "gets_per_s", "gets/s beside one writer", "reader processes"),
        (axes[1][2], incr, "incr_per_s", "incr/s, one variable, total", "processes"),
    ):
        for name, runs in data["results"].items():
            xs = sorted(n for n, run in runs.items() if not run["error"])
            if xs:
                width = 3 if name == TMPFS else 1.2
                axis.plot(xs, [runs[n][key] for n in xs], marker="o", label=name, linewidth=width)
        axis.set_yscale("log")
        axis.set_xlabel(xlabel)
        axis.set_title(title)
        axis.legend(fontsize=7)
    curve = scaled["curve"]["results"]
    for axis, key, ylabel in (
        (axes[2][0], "bytes", "tmpfs bytes per variable (log)"),
        (axes[2][1], "get", "random-order get µs (log)"),
        (axes[2][2], "put", "put µs while filling (log)"),
    ):
        for name, sizes in curve.items():
            xs = sorted(sizes)
            width = 3 if name == TMPFS else 1.2
            axis.plot(xs, [sizes[n][key] for n in xs], marker="o", label=name, linewidth=width)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("100-byte variables stored")
        axis.set_ylabel(ylabel)
        axis.set_title(f"scale: {ylabel.split(' (')[0]}")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return None
