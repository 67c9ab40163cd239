"""Reporting on segments: one segment's ``SegmentInfo``, and every segment on a server."""

from __future__ import annotations

import contextlib

import redis

from shmfs.backends import SegmentInfo
from shmfs.backends.redis import scripts
from shmfs.backends.redis.connection import client as make_client
from shmfs.backends.redis.connection import close as close_client
from shmfs.backends.redis.connection import redacted
from shmfs.backends.redis.guard import Guard, evicted, gone
from shmfs.errors import CorruptSegment, SegmentNotFound

__all__ = ["check_whole", "list_segments", "segment_info", "text"]


def text(value: bytes | str) -> str:
    """A reply as ``str``."""
    return value.decode() if isinstance(value, bytes) else value


def check_whole(client: redis.Redis, key: int) -> None:
    """After a read found nothing: ``SegmentNotFound`` if the segment is gone,
    ``CorruptSegment`` if the server evicted part of it."""
    prefix = f"shmfs:{{{key}}}:"
    keys = [prefix + "meta", prefix + "vars", prefix + "gen"]
    meta, values, generations, used = client.register_script(scripts.STATE)(keys=keys)
    if not meta:
        if values or generations:
            raise evicted(key, "metadata")
        raise gone(key)
    if values and not generations:
        raise evicted(key, "generations")
    if not values and text(used).lstrip("-").isdigit() and int(used) > 0:
        raise evicted(key, "values")


def segment_info(client: redis.Redis, key: int, url: str) -> SegmentInfo:
    """Report on segment ``key`` (``SegmentNotFound`` if it has no metadata)."""
    keys = [f"shmfs:{{{key}}}:meta", f"shmfs:{{{key}}}:vars"]
    reply = list(client.register_script(scripts.INFO)(keys=keys))
    variables = reply.pop()
    raw = dict(zip(reply[::2], reply[1::2], strict=True))
    if not raw:
        raise gone(key)
    meta = {text(k): text(v) for k, v in raw.items()}
    try:
        return SegmentInfo(
            key=key,
            backend="redis",
            size=int(meta.get("size", 0)),
            used=int(meta.get("used", 0)),
            variables=int(variables),
            perm=int(meta.get("perm", 0)),
            owner=int(meta.get("owner", -1)),
            location=f"{redacted(url)} shmfs:{{{key}}}",
            created=float(meta["created"]) if "created" in meta else None,
            creator_pid=int(meta["creator_pid"]) if "creator_pid" in meta else None,
        )
    except ValueError as exc:
        raise CorruptSegment(f"segment {key}: damaged metadata on the server", key=key) from exc


def list_segments(url: str) -> list[SegmentInfo]:
    """Every segment on the server ``url`` names, by ascending key."""
    client = make_client(url)
    found = []
    try:
        with Guard(url):
            for name in client.scan_iter(match="shmfs:{*}:meta", count=1000):
                tag = text(name).split("{", 1)[1].split("}", 1)[0]
                with contextlib.suppress(ValueError, SegmentNotFound):
                    found.append(segment_info(client, int(tag), url))  # not ours if not an int
    finally:
        close_client(client)
    return sorted(found, key=lambda info: info.key)
