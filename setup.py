"""Builds shmfs's one C module; everything else about the package is in pyproject.toml.

``shmfs._hot`` is optional: without a C compiler, or the headers of Python and zlib, the build
warns and goes on, and shmfs runs on its pure-Python path (the same protocols, slower); see
``shmfs/hotpath.py``.
"""

from setuptools import Extension, setup

# shmfs/_hot_c/module.c says what each part does.
PARTS = ("module", "hot", "slab", "put", "plain", "checksum", "mapping")

setup(
    ext_modules=[
        Extension(
            "shmfs._hot",
            [f"shmfs/_hot_c/{part}.c" for part in PARTS],
            depends=["shmfs/_hot_c/hot.h", "shmfs/_hot_c/layout.h"],
            libraries=["z"],  # zlib's crc32: the frame's checksum
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit"],
            optional=True,
        )
    ]
)
