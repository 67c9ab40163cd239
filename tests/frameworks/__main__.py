"""``python -m tests.frameworks``: Django's and cachelib's own cache tests on shmfs's backends.

    python -m tests.frameworks                      # both suites on tmpfs, sysv and redis
    python -m tests.frameworks --backends tmpfs     # what .ci/run runs
    python -m tests.frameworks --suites cachelib --backends sysv,redis

Downloads the pinned sdists with pip (into ``build/frameworks/`` unless ``--sources`` says
where; once), then runs, for each backend, Django's ``BaseCacheTests`` against
``shmfs.contrib.django.ShmfsCache`` and cachelib's common test classes against
``shmfs.contrib.cachelib.ShmfsCache``, each suite in a process of its own. Each backend gets a
fresh cache: under a private root in /dev/shm (tmpfs), a name of this run's own (sysv), or a
redis-server this run starts on a private unix socket (redis); all destroyed afterwards.

Exit status 0 when every test passed except those listed in ``expected.py``, which must not
pass; each such test is printed with its reason.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import shmfs
from bench.redis_server import RedisServer
from tests.frameworks import expected, sources

REPO = Path(__file__).resolve().parents[2]
BACKENDS = ("tmpfs", "sysv", "redis")
SUITES = ("django", "cachelib")
# Their tests import ``xprocess`` (in conftest.py, for the servers of their own Redis and
# memcached tests, which are not run here); this stands in for it, so pytest-xprocess need not
# be installed. Nothing here uses it.
XPROCESS_STUB = (
    '"""Stands in for pytest-xprocess, which the tests run here do not use."""\n\n\n'
    "class ProcessStarter:\n    pass\n"
)


@contextlib.contextmanager
def where(backend: str, scratch: Path) -> Iterator[dict[str, Any]]:
    """The cache options for ``backend``: a private root, or a redis-server of our own."""
    if backend == "redis":
        directory = scratch / "redis"
        directory.mkdir(mode=0o700)
        server = RedisServer.start(str(directory))
        try:
            yield {"backend": "redis", "root": server.url}
        finally:
            server.stop()
    elif backend == "tmpfs":
        root = tempfile.mkdtemp(prefix="shmfs-frameworks-", dir="/dev/shm")
        try:
            yield {"backend": "tmpfs", "root": root}
        finally:
            shutil.rmtree(root, ignore_errors=True)
    else:
        yield {"backend": backend}


def destroy(location: str, options: dict[str, Any]) -> None:
    """Remove the cache a suite used (a SysV segment outlives its processes)."""
    with contextlib.suppress(shmfs.ShmfsError):
        shmfs.Cache(
            location, size=options["size"], **{k: v for k, v in options.items() if k != "size"}
        ).destroy()


def environment(extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
    )
    return env


def run_django(tree: Path, location: str, options: dict[str, Any], scratch: Path) -> dict[str, str]:
    out = scratch / "django.json"
    command = [
        *(sys.executable, "-m", "tests.frameworks.django_suite"),
        *(str(tree / "tests"), location, json.dumps(options), str(out)),
    ]
    done = subprocess.run(
        command, check=False, cwd=REPO, env=environment({}), capture_output=True, text=True
    )
    if not out.exists():
        raise RuntimeError(f"Django's suite did not run:\n{done.stdout}{done.stderr}")
    outcomes: dict[str, str] = json.loads(out.read_text())
    out.unlink()
    if any(v in ("fail", "error") for v in outcomes.values()):
        sys.stderr.write(done.stderr)
    return outcomes


def run_cachelib(
    tree: Path, location: str, options: dict[str, Any], scratch: Path
) -> dict[str, str]:
    tests = tree / "tests"
    shutil.copy(REPO / "tests" / "frameworks" / "cachelib_suite.py", tests / "test_shmfs_cache.py")
    stubs = scratch / "stubs"
    stubs.mkdir(exist_ok=True)
    (stubs / "xprocess.py").write_text(XPROCESS_STUB)
    report = scratch / "cachelib.xml"
    command = [
        *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"),
        *(str(tests / "test_shmfs_cache.py"), f"--junitxml={report}", "-o", "junit_family=xunit1"),
    ]
    env = environment(
        {
            "SHMFS_FRAMEWORK_LOCATION": location,
            "SHMFS_FRAMEWORK_OPTIONS": json.dumps(options),
        }
    )
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(stubs)])
    done = subprocess.run(command, check=False, cwd=tree, env=env, capture_output=True, text=True)
    if not report.exists():
        raise RuntimeError(f"cachelib's suite did not run:\n{done.stdout}{done.stderr}")
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name", "?")
        outcome = "pass"
        for child in case:
            if child.tag == "skipped":
                outcome = f"skip: {child.get('message', '')}"
            elif child.tag in ("failure", "error"):
                outcome = "fail" if child.tag == "failure" else "error"
        outcomes[name] = outcome
    report.unlink()
    if any(v in ("fail", "error") for v in outcomes.values()):
        sys.stderr.write(done.stdout[-20000:])
    return outcomes


def judge(suite: str, backend: str, outcomes: dict[str, str]) -> list[str]:
    """Print the run's counts and exclusions; return what is wrong with it."""
    excluded = expected.DJANGO if suite == "django" else expected.CACHELIB
    problems = []
    passed = 0
    for name, outcome in sorted(outcomes.items()):
        reason = excluded.get(name.split("[")[0])
        if outcome == "pass" and reason is None:
            passed += 1
        elif outcome == "pass":
            problems.append(f"{name} passed: remove it from tests/frameworks/expected.py")
        elif reason is None:
            problems.append(f"{name}: {outcome}")
        else:
            print(f"    excluded {name} ({outcome}): {reason}")
    if not outcomes:
        problems.append("no test ran")
    print(f"  {suite} on {backend}: {passed} passed, {len(outcomes) - passed} excluded or failed")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.frameworks", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help="comma-separated, of %(default)s"
    )
    parser.add_argument(
        "--suites", default=",".join(SUITES), help="comma-separated, of %(default)s"
    )
    parser.add_argument(
        "--sources",
        type=Path,
        default=REPO / "build" / "frameworks",
        help="where the sdists are unpacked (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    suites = [s for s in args.suites.split(",") if s]
    for name in backends:
        if name not in BACKENDS:
            parser.error(f"unknown backend {name!r}")
    for name in suites:
        if name not in SUITES:
            parser.error(f"unknown suite {name!r}")
    pins = {"django": sources.DJANGO, "cachelib": sources.CACHELIB}
    trees = {}
    for suite in suites:
        pin = pins[suite]
        sources.check_installed(pin)
        trees[suite] = sources.fetch(pin, args.sources)
    runners = {"django": run_django, "cachelib": run_cachelib}
    problems = []
    started = time.monotonic()
    for backend in backends:
        with (
            tempfile.TemporaryDirectory(prefix="shmfs-frameworks-") as scratch,
            where(backend, Path(scratch)) as options,
        ):
            options["size"] = 8 * 2**20
            for suite in suites:
                location = f"shmfs-frameworks-{suite}-{os.getpid()}"
                try:
                    outcomes = runners[suite](trees[suite], location, options, Path(scratch))
                finally:
                    destroy(location, options)
                problems += [f"{suite} on {backend}: {p}" for p in judge(suite, backend, outcomes)]
    print(f"{len(backends)} backend(s), {time.monotonic() - started:.0f} s")
    for problem in problems:
        print(f"FAILED {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
