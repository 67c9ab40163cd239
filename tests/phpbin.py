"""Run the real PHP interpreter (Debian's php-cli) from tests.

Interop is only ever checked against real PHP. Locally a missing ``php`` skips the test; under CI
(``CI`` set, as .ci/run does) it fails, because CI installs php-cli and must never skip interop.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def php_binary() -> str:
    """Return the path of ``php``; skip the test (fail under CI) when it is missing."""
    path = shutil.which("php")
    if path is None:
        message = "php is not installed (apt-get install -y php-cli)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def run_php(
    code: str, *args: str, stdin: bytes | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    """Run ``code`` (a whole script, starting with ``<?php``) and return the finished process.

    ``display_errors`` goes to stderr so warnings never mix with the script's output.
    """
    return subprocess.run(
        [
            php_binary(),
            "-d",
            "display_errors=stderr",
            "-d",
            "error_reporting=E_ALL",
            "-r",
            code.removeprefix("<?php"),
            "--",
            *args,
        ],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
        # Under .ci/sanitize the sanitizer runtimes are preloaded for shmfs's C module; php is
        # not the code under test, and its opcache refuses to load beside them.
        env={name: value for name, value in os.environ.items() if name != "LD_PRELOAD"},
    )
