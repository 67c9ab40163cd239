"""Builds shmfs's one C module; everything else about the package is in pyproject.toml.

``shmfs._hot`` is optional: without a C compiler, or the headers of Python and zlib, the build
warns and goes on, and shmfs runs on its pure-Python path (the same protocols, slower; ``shmfs
--version`` says which); see ``shmfs/hotpath.py``. ``SHMFS_REQUIRE_C=1`` makes it required.
"""

import importlib.util
import os
from pathlib import Path

from setuptools import Extension, setup


def _write_layout_header() -> None:
    """shmfs/_hot_c/layout.h from shmfs/backends/tmpfs/layout.py, the one source of the tmpfs
    format's numbers (it imports nothing of shmfs, so it loads before shmfs is installed)."""
    here = Path(__file__).resolve().parent
    spec = importlib.util.spec_from_file_location(
        "shmfs_layout", here / "shmfs" / "backends" / "tmpfs" / "layout.py"
    )
    assert spec is not None and spec.loader is not None
    layout = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layout)
    header = here / "shmfs" / "_hot_c" / "layout.h"
    text = layout.header_text()
    if not header.exists() or header.read_text(encoding="ascii") != text:
        header.write_text(text, encoding="ascii")


_write_layout_header()

# shmfs/_hot_c/module.c says what each part does.
PARTS = (
    "module",
    "hot",
    "maps",
    "slab",
    "put",
    "plain",
    "checksum",
    "unpickle",
    "keyhash",
    "cachehits",
    "cacheset",
    "mapping",
    "sysv",
    "sysv_put",
    "batch",
    "resp",
)

setup(
    ext_modules=[
        Extension(
            "shmfs._hot",
            [f"shmfs/_hot_c/{part}.c" for part in PARTS],
            depends=["shmfs/_hot_c/hot.h", "shmfs/_hot_c/layout.h", "shmfs/_hot_c/sysv.h"],
            libraries=["z"],  # zlib's crc32: the frame's checksum
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit"],
            # SHMFS_REQUIRE_C=1 (wheels for PyPI, CI) turns a failed build into an error.
            optional=not os.environ.get("SHMFS_REQUIRE_C"),
        )
    ]
)
