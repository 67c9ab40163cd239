"""Which Redis server the backend uses, and its URL as messages show it (password hidden).

Kept apart from ``backend.py`` so that ``shmfs doctor`` can name the server without the
``redis`` package installed.
"""

from __future__ import annotations

import os
import urllib.parse

__all__ = ["default_url", "redacted"]


def default_url() -> str:
    """The server used when ``root=`` names none: ``$SHMFS_REDIS_URL``, else ``$SHMFS_ROOT``
    if it is a URL, else a server on localhost."""
    root = os.environ.get("SHMFS_ROOT", "")
    fallback = root if "://" in root else "redis://localhost:6379/0"
    return os.environ.get("SHMFS_REDIS_URL", fallback)


def redacted(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
