"""The pinned source distributions of Django and cachelib, downloaded with pip and unpacked.

Pinned by version and by sha256, so the tests that run are the ones that were read; the installed
packages must be the same versions (the ``test`` extra pins them), since a release's tests test
that release.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pin:
    """One source distribution: its project, version, sha256, and the files taken out of it."""

    project: str
    version: str
    sha256: str
    files: tuple[str, ...]

    @property
    def stem(self) -> str:
        """The sdist's top directory (and file name without ``.tar.gz``)."""
        return f"{self.project.lower()}-{self.version}"


DJANGO = Pin(
    "Django",
    "5.2.19",
    "ad03d8abc51dbff95ebf34b27123cf0c26a3b62db7ba0cd520783686362533d1",
    ("tests/cache/__init__.py", "tests/cache/models.py", "tests/cache/tests.py"),
)
CACHELIB = Pin(
    "cachelib",
    "0.17.0",
    "f3c7dc8d3c1132ab699681ffdf8a52d341d9425ac1401c538cf0b1d87b1677c8",
    (
        *(
            f"tests/{name}.py"
            for name in (
                "conftest",
                "common",
                "clear",
                "has",
                "delete_many_with_prefix",
                "serializer",
                "test_simple_cache",
            )
        ),
        "pyproject.toml",
    ),
)
PINS = (DJANGO, CACHELIB)


class SourceError(RuntimeError):
    """A source distribution could not be had, or does not match what is installed."""


def check_installed(pin: Pin) -> None:
    """Refuse to run one release's tests against another release."""
    try:
        installed = importlib.metadata.version(pin.project)
    except importlib.metadata.PackageNotFoundError:
        raise SourceError(
            f"{pin.project} is not installed: pip install -e '.[test]' (it pins {pin.version})"
        ) from None
    if installed != pin.version:
        raise SourceError(
            f"{pin.project} {installed} is installed, and these are the tests of {pin.version}: "
            f"pip install '{pin.project}=={pin.version}'"
        )


def fetch(pin: Pin, directory: Path) -> Path:
    """Download ``pin``'s sdist into ``directory`` (unless it is there) with pip, checking its
    sha256, and unpack the files the runs need; return the unpacked top directory."""
    tree = directory / pin.stem
    if all((tree / name).is_file() for name in pin.files):
        return tree
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        requirements = Path(scratch) / "requirements.txt"
        requirements.write_text(f"{pin.project}=={pin.version} --hash=sha256:{pin.sha256}\n")
        command = [
            *(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"),
            *("--no-binary", ":all:", "--require-hashes", "-r", str(requirements)),
            *("--dest", scratch),
        ]
        done = subprocess.run(
            command,
            check=False,
            capture_output=True,
            text=True,
            env={**os.environ, "PIP_NO_INPUT": "1"},
        )
        archives = [name for name in os.listdir(scratch) if name.endswith(".tar.gz")]
        if done.returncode != 0 or len(archives) != 1:
            raise SourceError(
                f"pip download of {pin.project}=={pin.version} failed:\n{done.stderr}"
            )
        with tarfile.open(Path(scratch) / archives[0]) as archive:
            top = archive.getnames()[0].split("/")[0]
            for name in pin.files:
                member = archive.getmember(f"{top}/{name}")
                member.name = f"{pin.stem}/{name}"
                archive.extract(member, directory, filter="data")
    return tree
