"""shmfs.ftok against real PHP's ftok(), and its argument errors."""

from __future__ import annotations

import os
import pathlib

import pytest

from shmfs.errors import InvalidArgument, InvalidKeyType
from shmfs.ftok import ftok
from tests.phpbin import run_php

PROJECT_IDS = ["a", "z", "\x00", "\x7f", "\x80", "\xff"]

# argv: the project ids as byte values (argv cannot carry NUL), "--", then the paths.
# Prints one line per path: the keys for every project id, space separated.
PHP_FTOK = r"""<?php
$args = array_slice($argv, 1);
$sep = array_search('--', $args, true);
$projects = array_map('intval', array_slice($args, 0, $sep));
foreach (array_slice($args, $sep + 1) as $path) {
    $keys = [];
    foreach ($projects as $p) {
        $keys[] = @ftok($path, chr($p));  // a missing file warns "ftok() failed"; -1 is the point
    }
    echo implode(' ', $keys), "\n";
}
"""


@pytest.fixture
def paths(tmp_path: pathlib.Path) -> list[str]:
    file = tmp_path / "segment.key"
    file.write_bytes(b"x")
    link = tmp_path / "link"
    link.symlink_to(file)
    unicode_dir = tmp_path / "caf\u00e9"
    unicode_dir.mkdir()
    return [
        str(file),
        str(tmp_path),
        str(link),  # stat() follows the link: same key as the file
        str(unicode_dir),
        "/",
        "/tmp",
        "/dev/shm",  # tmpfs: a different device byte from the root file system
        "/usr/bin/php",  # a chain of two symlinks
        str(tmp_path / "missing"),
    ]


@pytest.mark.php
def test_ftok_equals_php(paths: list[str]) -> None:
    projects = [str(ord(p)) for p in PROJECT_IDS]
    done = run_php(PHP_FTOK, *projects, "--", *paths)
    assert done.returncode == 0, done.stderr.decode()
    php_rows = [[int(k) for k in line.split()] for line in done.stdout.decode().splitlines()]
    ours = [[ftok(path, proj) for proj in PROJECT_IDS] for path in paths]
    assert ours == php_rows
    # The cases the rows must cover, so a vacuous match cannot pass.
    assert ours[-1] == [-1] * len(PROJECT_IDS)
    assert ours[2] == ours[0]
    assert any(k < 0 for row in ours for k in row)  # project ids >= 0x80 give negative keys


def test_ftok_formula_and_argument_forms(tmp_path: pathlib.Path) -> None:
    st = os.stat(tmp_path)
    expected = (st.st_ino & 0xFFFF) | ((st.st_dev & 0xFF) << 16) | (ord("a") << 24)
    assert ftok(tmp_path, "a") == expected  # os.PathLike
    assert ftok(str(tmp_path), b"a") == expected
    assert ftok(os.fsencode(tmp_path), ord("a")) == expected
    assert ftok(tmp_path, 0xFF) == expected - (ord("a") << 24) + (0xFF << 24) - (1 << 32)
    assert -(1 << 31) <= ftok(tmp_path, "\xff") < 0


@pytest.mark.parametrize(
    ("path", "proj_id", "error", "message"),
    [
        ("", "a", InvalidArgument, "cannot be empty"),
        (b"", "a", InvalidArgument, "cannot be empty"),
        ("/tmp\0x", "a", InvalidArgument, "must not contain any null bytes"),
        (b"/tmp\0", "a", InvalidArgument, "must not contain any null bytes"),
        ("/tmp", "", InvalidArgument, "must be a single character"),
        ("/tmp", "ab", InvalidArgument, "must be a single character"),
        ("/tmp", b"ab", InvalidArgument, "must be a single character"),
        ("/tmp", "\u0100", InvalidArgument, "must be a single character"),
        ("/tmp", 256, InvalidArgument, "must be within 0..255"),
        ("/tmp", -1, InvalidArgument, "must be within 0..255"),
        ("/tmp", True, InvalidKeyType, "must be of type str, bytes or int"),
        ("/tmp", 1.0, InvalidKeyType, "must be of type str, bytes or int"),
        ("/tmp", None, InvalidKeyType, "must be of type str, bytes or int"),
        (None, "a", InvalidKeyType, "must be a path"),
        (42, "a", InvalidKeyType, "must be a path"),
    ],
)
def test_ftok_bad_arguments_raise(path: object, proj_id: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message) as info:
        ftok(path, proj_id)  # type: ignore[arg-type]  # wrong types are the point
    # PHP raises ValueError/TypeError here; ours are those builtins too.
    assert isinstance(info.value, TypeError if error is InvalidKeyType else ValueError)


@pytest.mark.php
def test_php_rejects_what_we_reject() -> None:
    """PHP's own messages for the argument errors we copy."""
    done = run_php(
        r"""<?php
        foreach ([['', 'a'], ["/tmp\0x", 'a'], ['/tmp', ''], ['/tmp', 'ab']] as [$f, $p]) {
            try { ftok($f, $p); echo "no error\n"; }
            catch (ValueError $e) { echo $e->getMessage(), "\n"; }
        }
        """
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().splitlines() == [
        "ftok(): Argument #1 ($filename) cannot be empty",
        "ftok(): Argument #1 ($filename) must not contain any null bytes",
        "ftok(): Argument #2 ($project_id) must be a single character",
        "ftok(): Argument #2 ($project_id) must be a single character",
    ]
