"""The performance targets shmfs sets itself (docs/performance.md), each checked against this
run's results.

Every target is one row: what it asks, what was measured (with the baseline it is a ratio to,
measured in the same run), and whether it is met. A target that could not be measured in this run
(a system not available, a --quick run that stops short of 100k variables) says why, and counts
as not met.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.timing import Stats

__all__ = [
    "PHP_LOCKED",
    "REDIS_TARGETS",
    "SYSV",
    "TMPFS",
    "Row",
    "batch_rows",
    "curve_rows",
    "evaluate",
    "floor_note",
    "memory_per_variable",
    "redis_crowd_rows",
    "redis_rows",
    "scale_rows",
    "sysv_rows",
]

TMPFS, SYSV, LMDB, LMDB_DEFAULTS, DISKCACHE, MEMCPY = (
    "shmfs tmpfs",
    "shmfs sysv",
    "lmdb",
    "lmdb, defaults",
    "diskcache",
    "memcpy (floor)",
)
PHP_LOCKED = "PHP shm_*_var + sem_acquire"


@dataclass(frozen=True)
class Row:
    target: str
    measured: str
    met: bool | None  # None: could not be measured here (``measured`` says why)
    stated: bool = False  # a "state the figure" target: met by measuring it

    @property
    def verdict(self) -> str:
        if self.stated:
            return "stated"
        return {True: "yes", False: "NO", None: "not measured"}[self.met]


def _us(stats: Stats) -> str:
    return f"{stats.median:.2f} µs (p99 {stats.p99:.2f})"


def _rate(summary: dict[str, Any], key: str) -> str:
    low, high = summary[f"{key}_range"]
    runs = len(summary["runs"])
    spread = f" (median of {runs} runs: {low:,.0f} to {high:,.0f})" if runs > 1 else ""
    return f"{summary[key]:,.0f}/s{spread}"


def memory_per_variable(fill: dict[str, Any], system: str) -> dict[str, Any] | None:
    """Bytes one more 100-byte variable costs ``system``, over its largest fill step measured:
    its own byte count, plus the kernel's inode and dentry for every file it adds."""
    points = sorted(fill["footprint"].get(system, {}).items())
    if len(points) < 2:
        return None
    (low_n, low), (high_n, high) = points[-2], points[-1]
    per_file = fill.get("kernel_bytes_per_file")
    count = high_n - low_n
    own = (high.bytes - low.bytes) / count
    files = (high.files - low.files) / count
    kernel = files * per_file if per_file is not None else None
    return {
        "from": low_n,
        "to": high_n,
        "bytes": own,
        "files": files,
        "kernel": kernel,
        "total": own + (kernel or 0.0),
    }


def evaluate(  # a flat list of targets reads best as one list
    points: dict[str, Any], fill: dict[str, Any], pairs: dict[str, Any], incr: dict[str, Any]
) -> list[Row]:
    """Every target as a row, in the order docs/performance.md lists them."""
    rows: list[Row] = []
    results = points["results"]

    def point(value: str, system: str, op: str) -> Stats | None:
        found: Stats | None = results.get(value, {}).get(system, {}).get(op)
        return found

    def missing(value: str, *systems: str) -> str:
        why = []
        for system in systems:
            if system in results.get(value, {}):
                continue  # measured: not the reason a row is missing
            reason = points["unavailable"].get(system) or next(
                (errs[system] for errs in points["errors"].values() if system in errs), None
            )
            why.append(f"{system}: {reason or 'not measured'}")
        return "; ".join(why)

    def absolute(label: str, value: str, op: str, limit: float) -> None:
        ours = point(value, TMPFS, op)
        if ours is None:
            rows.append(Row(label, missing(value, TMPFS), None))
        else:
            rows.append(Row(label, _us(ours), ours.median <= limit))

    def ratio(label: str, value: str, op: str, base: str, limit: float) -> None:
        ours, theirs = point(value, TMPFS, op), point(value, base, op)
        if ours is None or theirs is None:
            rows.append(Row(label, missing(value, TMPFS, base), None))
            return
        r = ours.ratio(theirs)
        rows.append(
            Row(label, f"{ours.median:.2f} / {theirs.median:.2f} µs = {r:.2f}x", r <= limit)
        )

    def faster(label: str, value: str, op: str, base: str, times: float) -> None:
        ours, theirs = point(value, TMPFS, op), point(value, base, op)
        if ours is None or theirs is None:
            rows.append(Row(label, missing(value, TMPFS, base), None))
            return
        r = theirs.ratio(ours)
        rows.append(
            Row(
                label,
                f"{base} {theirs.median:.2f} / {ours.median:.2f} µs = {r:.1f}x faster",
                r >= times,
            )
        )

    # The targets were first set against lmdb as it comes (sync=True puts); lmdb with
    # sync=False is the stronger peer, so each lmdb target is judged against both.
    for base, how in ((LMDB_DEFAULTS, "defaults"), (LMDB, "sync=False")):
        ratio(f"tmpfs get 100-byte str <= 1.0x lmdb's get ({how})", "str100", "get", base, 1.0)
    absolute("tmpfs get 100-byte str <= 2 µs", "str100", "get", 2.0)
    for base, how in ((LMDB_DEFAULTS, "defaults"), (LMDB, "sync=False")):
        ratio(f"tmpfs put 100-byte str <= 0.5x lmdb's put ({how})", "str100", "put", base, 0.5)
    absolute("tmpfs put 100-byte str <= 5 µs", "str100", "put", 5.0)
    absolute("tmpfs get small dict <= 3 µs", "dict", "get", 3.0)
    absolute("tmpfs put small dict <= 6 µs", "dict", "put", 6.0)
    faster("tmpfs get small dict >= 5x faster than diskcache", "dict", "get", DISKCACHE, 5.0)
    faster("tmpfs put small dict >= 10x faster than diskcache", "dict", "put", DISKCACHE, 10.0)
    ratio("tmpfs get 1 MiB bytes <= 1.5x a 1 MiB memcpy", "bytes1m", "get", MEMCPY, 1.5)
    ratio("tmpfs put 1 MiB bytes <= 3x a 1 MiB memcpy", "bytes1m", "put", MEMCPY, 3.0)

    views = points.get("views", {}).get("view", {})
    label = "tmpfs zero-copy view: cost does not grow with the value (largest <= 1.5x smallest)"
    if views:
        small, large = min(views), max(views)
        r = views[large].ratio(views[small])
        text = ", ".join(f"{size:,} B {stats.median:.2f} µs" for size, stats in views.items())
        rows.append(Row(label, f"{text}: {r:.2f}x", r <= 1.5))
    else:
        rows.append(Row(label, "not measured", None))

    pair = pairs["results"].get(TMPFS, {}).get(1)
    for op, key, limit in (("puts", "puts_per_s", 150e3), ("gets", "gets_per_s", 500e3)):
        label = f"tmpfs writer + reader processes at once: >= {limit / 1e3:.0f}k {op}/s"
        if pair is None or pair["error"]:
            why = pair["error"] if pair else pairs["unavailable"].get(TMPFS, "not measured")
            rows.append(Row(label, str(why), None))
        else:
            rows.append(Row(label, _rate(pair, key), pair[key] >= limit))

    curve = fill["results"].get(TMPFS, {})
    label = "tmpfs get with 100k variables <= 1.5x get with 10"
    if 10 in curve and curve:
        largest = max(curve)
        r = curve[largest]["get"].ratio(curve[10]["get"])
        text = (
            f"{curve[largest]['get'].median:.2f} / {curve[10]['get'].median:.2f} µs = {r:.2f}x"
            f" ({largest:,} variables)"
        )
        floor = fill.get("floor", {}).get(largest)
        if floor is not None:
            text += floor_note(
                curve[largest]["get"].median,
                curve[10]["get"].median,
                {"floor_cold": floor["cold"].median, "floor_hot": floor["hot"].median},
            )
        if largest < 100_000:
            reason = fill["stopped"].get(TMPFS) or "this run's sizes stop there (--quick)"
            rows.append(Row(label, f"{text}; not at 100k: {reason}", None))
        else:
            rows.append(Row(label, text, r <= 1.5))
    else:
        rows.append(Row(label, fill["errors"].get(TMPFS, "not measured"), None))

    contended = incr["results"].get(TMPFS, {}).get(8)
    for label, met_key in (
        ("tmpfs incr from 8 processes on one variable >= 100k/s total", "rate"),
        ("tmpfs incr from 8 processes: exact", "exact"),
    ):
        if contended is None or contended["error"]:
            why = contended["error"] if contended else "not measured"
            rows.append(Row(label, str(why), None))
        elif met_key == "rate":
            rate = contended["incr_per_s"]
            rows.append(Row(label, _rate(contended, "incr_per_s"), rate >= 100e3))
        else:
            text = f"{contended['final']:,} counted, {contended['increments']:,} made"
            rows.append(Row(label, text, bool(contended["exact"])))

    rows += sysv_rows(fill)

    str100 = results.get("str100", {})
    ours, theirs = str100.get("shmfs redis", {}), str100.get("redis-py (unix socket)", {})
    rows += redis_rows(
        {"get": ours.get("get"), "put": ours.get("put")},
        {"GET": theirs.get("get"), "SET": theirs.get("put")},
        "two servers of one build; python -m bench.redis_compare shares one",
    )[:2]

    memory = memory_per_variable(fill, TMPFS)
    label = "tmpfs bytes per 100-byte variable: stated"
    if memory is None:
        rows.append(Row(label, "not measured", None))
    else:
        kernel = (
            f" + {memory['kernel']:,.0f} B kernel inode/dentry"
            if memory["kernel"] is not None
            else " (kernel inode/dentry not readable)"
        )
        text = (
            f"{memory['total']:,.0f} B = {memory['bytes']:,.0f} B file pages{kernel}"
            f" (from {memory['from']:,} to {memory['to']:,} variables)"
        )
        rows.append(Row(label, text, True, stated=True))
    return rows


def scale_rows(scaled: dict[str, Any]) -> list[Row]:
    """The slab-storage targets: many small variables, measured in ``bench/scale.py``."""
    rows = curve_rows(scaled["curve"])
    if len(rows) == 1:
        return rows  # not measured: the one row says why
    docker = scaled["docker"]
    label = "64 MiB tmpfs: >= 250,000 100-byte variables before SegmentFull, all readable"
    if docker["error"]:
        rows.append(Row(label, docker["error"], None))
    else:
        text = f"{docker['variables']:,} variables, {docker['wrong']} read back wrong"
        rows.append(Row(label, text, docker["variables"] >= 250_000 and not docker["wrong"]))
    churned = scaled["churn"]
    r = churned["after"] / churned["before"]
    rows.append(
        Row(
            "churn of mixed sizes: tmpfs bytes after <= 1.5x before, every value right",
            f"{churned['before'] / 2**20:.1f} -> {churned['after'] / 2**20:.1f} MiB = {r:.2f}x, "
            f"{churned['wrong']} wrong",
            r <= 1.5 and not churned["wrong"],
        )
    )
    cache = scaled["cache"]["results"]
    mine, theirs = cache.get("shmfs.Cache"), cache.get(DISKCACHE)
    if mine is None or theirs is None:
        rows.append(Row("Cache against diskcache", "diskcache not measured", None))
        return rows
    for op, times in (("get", 5.0), ("set", 10.0)):
        r = theirs[op] / mine[op]
        rows.append(
            Row(
                f"Cache {op}, str keys, random order: >= {times:.0f}x faster than diskcache",
                f"{theirs[op]:.2f} / {mine[op]:.2f} µs = {r:.1f}x",
                r >= times,
            )
        )
    rows.append(
        Row("Cache bytes per entry <= 256", f"{mine['bytes']:,.0f} B", mine["bytes"] <= 256)
    )
    return rows


def floor_note(cold: float, hot: float, floor: dict[str, float]) -> str:
    """What the machine's own cold read (``bench/coldread.py``) says of a cold/hot get ratio:
    what one random read of cold memory costs over a cached one, how many of those shmfs's
    get costs, and the least the ratio can be with one such read, and with the two dependent
    ones a get among many makes (the index bucket, then the slot)."""
    if "floor_cold" not in floor:
        return ""
    miss = floor["floor_cold"] - floor["floor_hot"]
    if miss <= 0 or hot <= 0:
        return f"; cold-read floor {floor['floor_cold']:.2f} / {floor['floor_hot']:.2f} µs"
    return (
        f"; this machine's cold-read floor (a random byte of a mapping as large, same loop): "
        f"{floor['floor_cold']:.2f} / {floor['floor_hot']:.2f} µs, a cold read +{miss:.2f} µs; "
        f"shmfs +{cold - hot:.2f} µs = {(cold - hot) / miss:.1f} cold reads; one alone makes "
        f"{(hot + miss) / hot:.2f}x, two (bucket, then slot) {(hot + 2 * miss) / hot:.2f}x"
    )


def curve_rows(curve: dict[str, Any]) -> list[Row]:
    """The rows of ``bench/scale.py``'s curve alone (``python -m bench.scale`` prints them)."""
    rows: list[Row] = []
    results = curve["results"]
    ours, lmdb = results.get(TMPFS, {}), results.get(LMDB, {})
    largest = max(ours) if ours else 0
    big = f"{largest:,} variables"
    if not ours:
        return [Row("tmpfs scale targets", curve["unavailable"].get(TMPFS, "not measured"), None)]
    rows.append(
        Row(
            f"tmpfs bytes per 100-byte variable <= 256 at {big}",
            f"{ours[largest]['bytes']:,.0f} B",
            ours[largest]["bytes"] <= 256,
        )
    )
    if largest in lmdb:
        put = ours[largest]["put"] / lmdb[largest]["put"]
        rows.append(
            Row(
                f"tmpfs put filling to {big} <= 0.5x lmdb's (sync=False)",
                f"{ours[largest]['put']:.2f} / {lmdb[largest]['put']:.2f} µs = {put:.2f}x",
                put <= 0.5,
            )
        )
        get = ours[largest]["get"] / lmdb[largest]["get"]
        rows.append(
            Row(
                f"tmpfs random-order get at {big} <= 1.0x lmdb's",
                f"{ours[largest]['get']:.2f} / {lmdb[largest]['get']:.2f} µs = {get:.2f}x",
                get <= 1.0,
            )
        )
    else:
        rows.append(Row(f"tmpfs against lmdb at {big}", "lmdb not measured", None))
    among10 = curve["get10"].get(TMPFS)
    if among10:
        r = ours[largest]["get"] / among10
        rows.append(
            Row(
                f"tmpfs random-order get at {big} <= 3x a get among 10",
                f"{ours[largest]['get']:.2f} / {among10:.2f} µs = {r:.2f}x"
                + floor_note(ours[largest]["get"], among10, ours[largest]),
                r <= 3.0,
            )
        )
    return rows


#: One process, same server, same socket: shmfs's operation against redis-py's own command.
REDIS_TARGETS: tuple[tuple[str, str, float], ...] = (
    ("get", "GET", 1.1),
    ("put", "SET", 1.3),
    ("incr", "INCR", 1.3),
)


def redis_rows(ours: dict[str, Stats | None], raw: dict[str, Stats | None], how: str) -> list[Row]:
    """The redis targets: shmfs's ``get``/``put``/``incr`` (``ours``, by operation) against
    redis-py's ``GET``/``SET``/``INCR`` (``raw``, by command) measured in the same run; ``how``
    says where (same server and socket, or not)."""
    rows = []
    for op, command, limit in REDIS_TARGETS:
        label = f"redis {op} <= {limit}x redis-py {command} ({how})"
        mine, theirs = ours.get(op), raw.get(command)
        if mine is None or theirs is None:
            rows.append(Row(label, "not measured in this run", None))
            continue
        r = mine.ratio(theirs)
        text = f"{mine.median:.1f} / {theirs.median:.1f} µs = {r:.2f}x"
        rows.append(Row(label, text, r <= limit))
    return rows


def redis_crowd_rows(
    ours: dict[str, Any], raw: dict[str, Any], processes: int, seconds: float
) -> list[Row]:
    """The contended redis targets: ``processes`` processes of mixed get/put/incr for
    ``seconds`` (``{"rate": ops/s, "put": Stats}`` for shmfs and for raw redis-py)."""
    rate = ours["rate"] / raw["rate"]
    p99 = ours["put"].p99 / raw["put"].p99
    return [
        Row(
            f"redis, {processes} processes mixed get/put/incr for {seconds:g} s: throughput "
            ">= 0.8x raw redis-py",
            f"{ours['rate']:,.0f} / {raw['rate']:,.0f} ops/s = {rate:.2f}x",
            rate >= 0.8,
        ),
        Row(
            f"redis, {processes} processes: put p99 <= 3x raw redis-py's SET p99",
            f"{ours['put'].p99:,.0f} / {raw['put'].p99:,.0f} µs = {p99:.2f}x",
            p99 <= 3.0,
        ),
    ]


#: (backend, limit): a get_many of 100 variables against one get of the same segment.
BATCH_TARGETS: tuple[tuple[str, float], ...] = (("redis", 2.0), ("tmpfs", 30.0), ("sysv", 30.0))


def batch_rows(results: dict[str, Any]) -> list[Row]:
    """The batch targets: ``get_many`` of 100 variables against one ``get``, per backend
    (``results``: :func:`bench.batch.measure`'s, by backend)."""
    rows = []
    for backend, limit in BATCH_TARGETS:
        label = f"{backend} get_many of 100 variables <= {limit:g}x one get"
        found = results.get(backend)
        if not isinstance(found, dict):
            rows.append(Row(label, str(found or "not measured"), None))
            continue
        many, one = found["get_many"], found["get"]
        r = many.ratio(one)
        rows.append(Row(label, f"{many.median:.1f} / {one.median:.2f} µs = {r:.1f}x", r <= limit))
    floor = results.get("redis-py")
    if isinstance(floor, dict):
        many, one = floor["get_many"], floor["get"]
        rows.append(
            Row(
                "redis-py's own HMGET of those 100 fields against its HGET, same socket: stated",
                f"{many.median:.1f} / {one.median:.2f} µs = {many.ratio(one):.1f}x",
                True,
                stated=True,
            )
        )
    return rows


def sysv_rows(fill: dict[str, Any]) -> list[Row]:
    """The sysv targets: against PHP's own locked calls among 100 variables, a get among
    10,000 against one among 10, and the bytes a segment made for size=10000 takes."""
    rows: list[Row] = []
    curve, php = fill["results"].get(SYSV, {}), fill["results"].get(PHP_LOCKED, {})
    for op, times, limit in (("get", 1.5, 1.5), ("put", 2.0, 2.5)):
        label = f"sysv {op}, 100 variables: <= {times}x PHP's locked shm_{op}_var and <= {limit} µs"
        if 100 not in curve or 100 not in php:
            why = fill["unavailable"].get(SYSV) or fill["unavailable"].get("PHP + sem_acquire")
            rows.append(Row(label, why or fill["errors"].get(SYSV, "not measured"), None))
            continue
        ours, theirs = curve[100][op], php[100][op]
        r = ours.ratio(theirs)
        rows.append(
            Row(
                label,
                f"{ours.median:.2f} / {theirs.median:.2f} µs = {r:.2f}x",
                r <= times and ours.median <= limit,
            )
        )
    label = "sysv get among 10,000 variables <= 2x a get among 10"
    if 10 in curve and 10_000 in curve:
        r = curve[10_000]["get"].ratio(curve[10]["get"])
        text = f"{curve[10_000]['get'].median:.2f} / {curve[10]['get'].median:.2f} µs = {r:.2f}x"
        rows.append(Row(label, text, r <= 2.0))
    else:
        rows.append(Row(label, fill["stopped"].get(SYSV) or "not measured", None))
    measured = fill.get("sysv_segment_bytes", "not measured")
    label = "sysv segment for size=10000 <= 14,096 bytes in ipcs"
    if isinstance(measured, int):
        rows.append(Row(label, f"{measured:,} bytes", measured <= 14_096))
    else:
        rows.append(Row(label, str(measured), None))
    return rows
