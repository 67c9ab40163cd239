"""Which backend holds a key, and where else it is.

A PHP program's ``shm_attach`` makes a System V segment, while ``shmfs`` defaults to tmpfs: the
same key can name a segment on one local backend, on the other, or on both. The commands that
act on one segment say when the key they were asked for lives on another local backend, and
how to reach it, instead of a bare "no segment" (or a stale value from the wrong one).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import shmfs
from shmfs.backends import backend_class, backend_name
from shmfs.errors import ShmfsError

__all__ = ["LOCAL_BACKENDS", "attach", "elsewhere", "listing", "note_elsewhere", "present"]

#: Backends whose segments live on this machine, so a bare ``shmfs ls`` lists them all.
LOCAL_BACKENDS = ("tmpfs", "sysv")


def _root_for(name: str, args: argparse.Namespace) -> str | None:
    """``--root`` for ``name`` when the chosen backend is another: sysv has no root, and a
    URL is Redis's, not a directory."""
    if name == backend_name(args.backend):
        root: str | None = args.root
        return root
    if args.root and "://" not in args.root:
        return str(args.root)
    return None


def _options(args: argparse.Namespace) -> dict[str, Any]:
    trust = getattr(args, "trust_uids", None)
    return {"trust_uids": trust} if trust else {}


def present(name: str, key: int, root: str | None) -> bool:
    """Whether backend ``name`` holds a segment ``key`` under ``root`` that we can see."""
    return any(info["key"] == key for info in shmfs.segments(backend=name, root=root))


def elsewhere(key: int, args: argparse.Namespace) -> list[str]:
    """The other local backends that hold a segment ``key``."""
    chosen = backend_name(args.backend)
    found = []
    for name in LOCAL_BACKENDS:
        if name == chosen:
            continue
        try:
            if present(name, key, _root_for(name, args)):
                found.append(name)
        except ShmfsError:
            continue  # a backend that cannot be looked at holds nothing we could point to
    return found


def _how(name: str) -> str:
    made_by = " (PHP's shm_attach makes sysv segments)" if name == "sysv" else ""
    return f"a {name} segment with that key exists{made_by}: add --backend {name}"


def note_elsewhere(key: int, args: argparse.Namespace, what: str) -> None:
    """Tell stderr that ``key`` also names a segment on another local backend."""
    for name in elsewhere(key, args):
        print(
            f"shmfs: note: {what}; {_how(name).replace('exists', 'exists too')}",
            file=sys.stderr,
        )


def require(args: argparse.Namespace, key: int) -> None:
    """Raise ``SegmentNotFound`` unless the chosen backend holds ``key``, naming the other local
    backend that does where one does."""
    name = backend_name(args.backend)
    if not present(name, key, args.root):
        message = f"no segment with key {key} {backend_class(name).scope(args.root)}"
        hints = [_how(other) for other in elsewhere(key, args)]
        raise shmfs.SegmentNotFound("; ".join([message, *hints]), key=key)


def attach(
    args: argparse.Namespace,
    *,
    codec: str | None = None,
    key: int | None = None,
    create: bool = False,
) -> shmfs.Segment:
    """Attach ``--key`` (or ``key``) on the chosen backend.

    Only ``send`` creates; the others report an unknown segment, naming the other local
    backend that holds the key where one does.

    Raises:
        SegmentNotFound: the key names no segment on the chosen backend (and ``create`` is
            false).
    """
    key = args.key if key is None else key
    name = backend_name(args.backend)
    backend = backend_class(name)
    if not create:
        require(args, key)
    options: dict[str, Any] = {"backend": args.backend, "root": args.root, **_options(args)}
    # A backend's native codec (PHP's on sysv) is the default, so PHP reads what send stores.
    native = backend.native_codec
    if codec or native:
        options["codec"] = codec or native
    return shmfs.attach(key, args.size, **options)


def listing(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every segment ``shmfs ls`` shows: of ``--backend`` alone when given, else of the
    chosen backend and every local one, local backends first, each by ascending key.

    A backend other than the one asked for that cannot be listed (no SysV IPC here, an
    unsafe root) is left out with a note on stderr; the one asked for raises.
    """
    chosen = backend_name(args.backend)
    names = [chosen] if args.backend else [*LOCAL_BACKENDS, chosen]
    found: list[dict[str, Any]] = []
    for name in dict.fromkeys(names):  # in order, once each
        try:
            found += shmfs.segments(backend=name, root=_root_for(name, args))
        except ShmfsError as exc:
            if name == chosen:
                raise
            print(f"shmfs: note: {name} segments not listed: {exc}", file=sys.stderr)
    return found
