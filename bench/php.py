"""PHP's own shm_put_var/shm_get_var, timed inside php (no process start in the figure)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess

SCRIPT = r"""
$key = (int)$argv[1];
$rounds = (int)$argv[2];
$values = [
    "str100" => str_repeat("x", 100),
    "bytes4k" => random_bytes(4096),
    "bytes1m" => random_bytes(1 << 20),
    "dict" => ["user" => 42, "name" => "alice", "tags" => ["a", "b"], "score" => 1.5],
];
$shm = shm_attach($key, 8 << 20, 0600);
$out = [];
foreach ($values as $name => $value) {
    $n = $name === "bytes1m" ? max(intdiv($rounds, 50), 20) : $rounds;
    shm_put_var($shm, 1, $value);
    $t = hrtime(true);
    for ($i = 0; $i < $n; $i++) shm_put_var($shm, 1, $value);
    $put = (hrtime(true) - $t) / $n / 1000;
    $t = hrtime(true);
    for ($i = 0; $i < $n; $i++) shm_get_var($shm, 1);
    $get = (hrtime(true) - $t) / $n / 1000;
    $out[$name] = ["put" => $put, "get" => $get];
}
shm_remove($shm);
echo json_encode($out);
"""


def measure(rounds: int) -> dict[str, dict[str, float]] | None:
    """Per-operation µs of PHP's functions for each benchmark value, or None without php."""
    php = shutil.which("php")
    if php is None:
        return None
    key = random.randrange(0x5EB10000, 0x5EB1FFFF)
    done = subprocess.run(
        [php, "-r", SCRIPT, "--", str(key), str(rounds)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        return None
    result: dict[str, dict[str, float]] = json.loads(done.stdout)
    return result
