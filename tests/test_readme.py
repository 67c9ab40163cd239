"""The README's Python examples type-check under ``mypy --strict``, as a user's code would.

Each ```python block is a file of its own (they are separate programs); mypy sees this checkout's
shmfs through MYPYPATH, so the test holds whatever shmfs the environment has installed. That an
editable install alone lets mypy find shmfs is checked by .ci/run, from outside the checkout.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import shmfs

CHECKOUT = Path(shmfs.__file__).resolve().parent.parent
README = CHECKOUT / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)


def test_the_readme_has_python_examples() -> None:
    assert len(python_blocks()) >= 3


def test_readme_python_examples_type_check(tmp_path: Path) -> None:
    for number, block in enumerate(python_blocks()):
        (tmp_path / f"readme_example_{number}.py").write_text(block, encoding="utf-8")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            os.devnull,
            *sorted(str(path) for path in tmp_path.glob("readme_example_*.py")),
        ],
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(CHECKOUT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
