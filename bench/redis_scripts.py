"""``python -m bench.redis_scripts``: what each redis operation costs the server, by itself.

A client's time on a shared machine moves with every neighbour; the server's own account does
not move as much, and an instruction count not at all. For each operation (shmfs's ``get``,
``put``, ``incr``, a ``get_many`` of 100 variables, and redis-py's ``GET``, ``SET``, ``INCR``,
``HMGET`` of the same bytes) this runs a batch of calls against a redis-server of its own on a
unix socket and prints, per call, the server's ``usec_per_call`` from ``INFO commandstats`` (the
median of ``--rounds`` rounds; the command the operation sends: ``EVALSHA`` for a script), or,
with ``--instructions``, the instructions the server executed, counted by callgrind (the server
runs under valgrind; ``callgrind_control`` zeroes and dumps its counters around each batch).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import shmfs
from bench.redis_server import RedisServer, ServerError

KEY = 4242
VALUE = "x" * 100
VARIABLES = 100

# name -> (the command whose statistics count, a setup-free call)
Cases = dict[str, tuple[str, Callable[[], object]]]


def _cases(seg: shmfs.Segment, plain: shmfs.Segment, raw: Any) -> Cases:
    indexes = list(range(VARIABLES))
    seg.put_many(dict.fromkeys(indexes, VALUE))
    seg[VARIABLES] = 1000
    plain[1] = 1000
    frame = raw.hget(f"shmfs:{{{KEY}}}:vars", "0")
    raw.set("raw", frame)
    raw.set("counter", 1000)
    names = f"shmfs:{{{KEY}}}:vars"
    return {
        "shmfs get": ("hget", lambda: seg.get(0)),
        "shmfs put": ("evalsha", lambda: seg.put(0, VALUE)),
        "shmfs incr": ("evalsha", lambda: seg.incr(VARIABLES)),
        "shmfs incr (json)": ("evalsha", lambda: plain.incr(1)),
        f"shmfs get_many of {VARIABLES}": ("evalsha", lambda: seg.get_many(indexes)),
        "redis-py GET": ("get", lambda: raw.get("raw")),
        "redis-py SET": ("set", lambda: raw.set("raw", frame)),
        "redis-py INCR": ("incrby", lambda: raw.incr("counter")),
        f"redis-py HMGET of {VARIABLES}": ("hmget", lambda: raw.hmget(names, indexes)),
    }


def _commandstats(raw: Any, cases: Cases, calls: int, rounds: int) -> dict[str, float]:
    found: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (command, call) in cases.items():
            raw.config_resetstat()
            for _ in range(calls):
                call()
            found[name].append(
                float(raw.info("commandstats")[f"cmdstat_{command}"]["usec_per_call"])
            )
    return {name: statistics.median(values) for name, values in found.items()}


def _instructions(
    server: RedisServer, directory: str, cases: Cases, calls: int
) -> dict[str, float]:
    pid = str(server.process.pid)
    found = {}
    for number, (name, (_, call)) in enumerate(cases.items()):
        subprocess.run(["callgrind_control", "--zero", pid], capture_output=True, check=True)
        for _ in range(calls):
            call()
        subprocess.run(
            ["callgrind_control", f"--dump=case{number}", pid], capture_output=True, check=True
        )
        dumps = sorted(glob.glob(os.path.join(directory, "callgrind.out.*")), key=os.path.getmtime)
        with open(dumps[-1]) as dump:
            totals = [line for line in dump if line.startswith(("summary:", "totals:"))]
        found[name] = int(totals[-1].split()[1]) / calls
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_scripts", description=__doc__)
    parser.add_argument("--calls", type=int, default=2000, help="calls per batch")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (commandstats)")
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions (valgrind's callgrind)"
    )
    args = parser.parse_args(argv)
    try:
        import redis  # noqa: PLC0415  # the peer: reported, not a traceback, when absent
    except ImportError:
        print("bench.redis_scripts: needs the redis package (pip install redis)", file=sys.stderr)
        return 2
    wrapper: tuple[str, ...] = ()
    directory = tempfile.mkdtemp(prefix="shmfs-redis-scripts-")
    if args.instructions:
        if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
            print("bench.redis_scripts: --instructions needs valgrind", file=sys.stderr)
            return 2
        out = os.path.join(directory, "callgrind.out.%p")
        wrapper = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}")
    try:
        server = RedisServer.start(directory, wrapper=wrapper, timeout=120.0)
    except ServerError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        print(f"bench.redis_scripts: {exc}", file=sys.stderr)
        return 2
    raw = redis.Redis(unix_socket_path=server.socket)
    seg = plain = None
    try:
        seg = shmfs.attach(KEY, 1 << 20, backend="redis", root=server.url)
        plain = shmfs.attach(KEY + 1, 1 << 20, backend="redis", root=server.url, codec="json")
        cases = _cases(seg, plain, raw)
        for _, call in cases.values():  # the server learns the scripts; connections are made
            for _ in range(20):
                call()
        if args.instructions:
            figures = _instructions(server, directory, cases, args.calls)
            unit = "instructions per call"
        else:
            figures = _commandstats(raw, cases, args.calls, args.rounds)
            unit = f"usec_per_call, median of {args.rounds} rounds of {args.calls} calls"
    finally:
        if plain is not None:
            plain.destroy()
        if seg is not None:
            seg.destroy()
        raw.close()
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    print(f"the server's cost of each operation ({unit}); load average {os.getloadavg()[0]:.1f}")
    for name, figure in figures.items():
        print(f"{name:<26} {figure:>12,.1f}" if figure < 1000 else f"{name:<26} {figure:>12,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
