"""The README and docs/ hold what a reader can run and follow: their Python examples type-check
under ``mypy --strict`` as a user's code would, the README's first example runs as written, the
test command is the one CI runs, and every link points at a file (and heading) that exists.

Each ```python block is a file of its own (they are separate programs); mypy sees this checkout's
shmfs through MYPYPATH, so the test holds whatever shmfs the environment has installed. That an
editable install alone lets mypy find shmfs is checked by .ci/run, from outside the checkout.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import shmfs

CHECKOUT = Path(shmfs.__file__).resolve().parent.parent
README = CHECKOUT / "README.md"
DOCS = sorted((CHECKOUT / "docs").glob("*.md"))
# .ci/run runs exactly this; the README must give the same command.
TEST_COMMAND = "pip install -e '.[test]' && python -m pytest"
# A newcomer reads the README in ten minutes; the deep parts belong in docs/.
README_MAX_WORDS = 3000


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(encoding="utf-8"), re.M | re.S)


def test_the_readme_has_python_examples() -> None:
    assert len(python_blocks(README)) >= 3


def test_readme_and_docs_python_examples_type_check(tmp_path: Path) -> None:
    for page in [README, *DOCS]:
        for number, block in enumerate(python_blocks(page)):
            name = f"example_{page.stem.replace('-', '_')}_{number}.py"
            (tmp_path / name).write_text(block, encoding="utf-8")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            os.devnull,
            *sorted(str(path) for path in tmp_path.glob("example_*.py")),
        ],
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(CHECKOUT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_first_example_runs_as_written(root: str, tmp_path: Path) -> None:
    """reader.py, started first, prints what writer.py stores, and destroys the segment."""
    reader_py, writer_py = python_blocks(README)[:2]
    assert reader_py.startswith("# reader.py") and writer_py.startswith("# writer.py")
    (tmp_path / "reader.py").write_text(reader_py, encoding="utf-8")
    (tmp_path / "writer.py").write_text(writer_py, encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if key != "SHMFS_BACKEND"}
    path = os.pathsep.join(filter(None, [str(CHECKOUT), env.get("PYTHONPATH")]))
    env.update(SHMFS_ROOT=root, PYTHONPATH=path)
    reader = subprocess.Popen(
        [sys.executable, "reader.py"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The reader creates the segment and watches at once; the writer's ten puts take 2 s.
        deadline = time.monotonic() + 60
        while not shmfs.segments(backend="tmpfs", root=root):
            assert reader.poll() is None, reader.communicate()
            assert time.monotonic() < deadline, "reader.py never attached"
            time.sleep(0.01)
        writer = subprocess.run(
            [sys.executable, "writer.py"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert writer.returncode == 0, writer.stderr
        out, err = reader.communicate(timeout=120)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.communicate()
    assert reader.returncode == 0, err
    assert out.splitlines()[-2:] == ["10/10 done", "10 updates counted"], out
    assert not shmfs.segments(backend="tmpfs", root=root)


def test_the_readme_gives_the_test_command_ci_runs() -> None:
    assert TEST_COMMAND in README.read_text(encoding="utf-8").splitlines()


def test_the_readme_is_read_in_ten_minutes() -> None:
    words = len(README.read_text(encoding="utf-8").split())
    assert words <= README_MAX_WORDS, f"README.md has {words} words: move the detail to docs/"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {_anchor(title) for title in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_every_link_in_the_readme_and_docs_resolves() -> None:
    broken = []
    for page in [README, *DOCS]:
        text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (page.parent / file).resolve() if file else page
            if not linked.exists() or not linked.is_relative_to(CHECKOUT):
                broken.append(f"{page.name}: {target}")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken
