"""PHP's own ``shm_put_var``/``shm_get_var``, timed inside ``php`` (C speed, no process start in
the figures).

Each timed round is one ``php`` run that does a batch of puts then a batch of gets, bracketing
every call with ``hrtime()`` and reporting the nanoseconds as JSON, so PHP takes its turn in the
interleaved rounds like any other system. The segment (and, for the locked variant, PHP's
``sem_get`` semaphore on the same key, as PHP code guards a segment) persists between runs;
``close()`` removes both.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

from bench.scratch import Scratch
from bench.system import Unavailable
from bench.values import Picks

__all__ = ["PhpSubject"]

SCRIPT = r"""<?php
// argv: action key size ...; prints JSON on stdout.
[$self, $action, $key, $size] = array_slice($argv, 0, 4);
$key = (int)$key;
$size = (int)$size;

function value(string $name) {
    switch ($name) {
        case "str100": return str_repeat("x", 100);
        case "bytes4k": return random_bytes(4096);
        case "bytes1m": return random_bytes(1 << 20);
        case "dict": return ["user" => 42, "name" => "alice", "tags" => ["a", "b"], "score" => 1.5];
    }
    fwrite(STDERR, "unknown value $name\n");
    exit(2);
}

if ($action === "remove") {
    $shm = shm_attach($key, $size, 0600);
    shm_remove($shm);
    if (function_exists("sem_get")) {
        $sem = sem_get($key, 1, 0600, true);
        sem_remove($sem);
    }
    echo json_encode(["removed" => true]);
    exit(0);
}

$shm = shm_attach($key, $size, 0600);

if ($action === "fill") {
    // argv: from to deadline_seconds; stores the 100-byte str at from .. to-1.
    [$from, $to, $seconds] = [(int)$argv[4], (int)$argv[5], (float)$argv[6]];
    $value = value("str100");
    $deadline = hrtime(true) + (int)($seconds * 1e9);
    for ($i = $from; $i < $to; $i++) {
        if (($i & 255) === 0 && hrtime(true) > $deadline) break;
        if (!shm_put_var($shm, $i, $value)) { fwrite(STDERR, "put $i failed\n"); exit(3); }
    }
    echo json_encode(["reached" => $i]);
    exit(0);
}

// action "round": argv value_name count among(-1: index 1 always) locked(0/1) seed
[$name, $count, $among, $locked, $seed] =
    [$argv[4], (int)$argv[5], (int)$argv[6], $argv[7] === "1", (int)$argv[8]];
$value = value($name);
$sem = $locked ? sem_get($key, 1, 0600, true) : null;
mt_srand($seed);
$indices = [];
for ($k = 0; $k < $count; $k++) $indices[] = $among < 0 ? 1 : mt_rand(0, $among - 1);

// The bracket alone, to subtract; then a short warm-up so the first call's faults are not timed.
$bracket = [];
for ($k = 0; $k < 2000; $k++) { $t = hrtime(true); $bracket[] = hrtime(true) - $t; }
sort($bracket);
foreach (array_slice($indices, 0, 10) as $i) {
    if ($among < 0) shm_put_var($shm, $i, $value);
    shm_get_var($shm, $i);
}

$put = [];
$get = [];
if ($locked) {
    foreach ($indices as $i) {
        $t = hrtime(true);
        sem_acquire($sem); shm_put_var($shm, $i, $value); sem_release($sem);
        $put[] = hrtime(true) - $t;
    }
    foreach ($indices as $i) {
        $t = hrtime(true);
        sem_acquire($sem); shm_get_var($shm, $i); sem_release($sem);
        $get[] = hrtime(true) - $t;
    }
} else {
    foreach ($indices as $i) {
        $t = hrtime(true); shm_put_var($shm, $i, $value); $put[] = hrtime(true) - $t;
    }
    foreach ($indices as $i) {
        $t = hrtime(true); shm_get_var($shm, $i); $get[] = hrtime(true) - $t;
    }
}
echo json_encode(["bracket" => $bracket[intdiv(count($bracket), 2)], "put" => $put, "get" => $get]);
"""


class PhpSubject:
    """PHP's functions on one System V segment, as a subject of the interleaved rounds."""

    def __init__(self, scratch: Scratch, *, locked: bool, size: int = 32 << 20) -> None:
        php = shutil.which("php")
        if php is None:
            raise Unavailable("php not installed: apt-get install php-cli")
        modules = subprocess.run(
            [php, "-m"], capture_output=True, text=True, check=False, timeout=60
        ).stdout.split()
        needed = ["sysvshm", "sysvsem"] if locked else ["sysvshm"]
        missing = [module for module in needed if module not in modules]
        if missing:
            raise Unavailable(f"php lacks {', '.join(missing)}")
        self.php = php
        self.locked = locked
        self.name = "PHP shm_*_var + sem_acquire" if locked else "PHP shm_*_var (no lock)"
        self.note = "PHP 8's C functions timed inside php (hrtime per call), " + (
            "each call inside sem_acquire/sem_release" if locked else "no lock, as PHP does"
        )
        self.key = scratch.sysv_key()
        self.size = size
        self.script = scratch.tmp_path("bench.php")
        with open(self.script, "w", encoding="utf-8") as file:
            file.write(SCRIPT)
        self.closed = False
        scratch.on_close(self.name, self.close)

    def _run(self, *args: object, timeout: float = 600) -> dict[str, Any]:
        done = subprocess.run(
            [self.php, "-d", "memory_limit=-1", self.script, *(str(a) for a in args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"php exited {done.returncode}: {done.stderr.strip()[:300]}")
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def supports(self, value_name: str) -> bool:
        del value_name
        return True

    def timed_round(self, value_name: str, picks: Picks) -> dict[str, list[float]]:
        """One batch of puts then gets, in µs per call with PHP's timer bracket removed."""
        out = self._run(
            "round",
            self.key,
            self.size,
            value_name,
            picks.count,
            -1 if picks.among is None else picks.among,
            int(self.locked),
            picks.seed,
        )
        bracket = float(out["bracket"])
        return {op: [max(ns - bracket, 0.0) / 1000 for ns in out[op]] for op in ("put", "get")}

    def fill(self, start: int, stop: int, seconds: float) -> int:
        """Store the 100-byte str (``values.SMALL``, built the same way in PHP) at
        ``start .. stop - 1`` within ``seconds``; return how far it got."""
        return int(self._run("fill", self.key, self.size, start, stop, seconds)["reached"])

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._run("remove", self.key, self.size, timeout=60)
