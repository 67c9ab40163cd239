"""Builds shmfs's one C module; everything else about the package is in pyproject.toml.

``shmfs._hot`` is optional: without a C compiler, or the headers of Python and zlib, the build
warns and goes on, and shmfs runs on its pure-Python path (the same protocols, slower); see
``shmfs/hotpath.py``.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "shmfs._hot",
            ["shmfs/_hot.c"],
            libraries=["z"],  # zlib's crc32: the frame's checksum
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit"],
            optional=True,
        )
    ]
)
