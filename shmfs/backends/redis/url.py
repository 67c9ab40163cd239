"""Which Redis server the backend uses, and its URL as messages show it (passwords hidden).

Kept apart from ``connection.py`` so that ``shmfs doctor`` can name the server without the
``redis`` package installed.
"""

from __future__ import annotations

import os
import re
import urllib.parse

__all__ = ["default_url", "redacted"]


def default_url() -> str:
    """The server used when ``root=`` names none: ``$SHMFS_REDIS_URL``, else ``$SHMFS_ROOT``
    if it is a URL, else a server on localhost."""
    root = os.environ.get("SHMFS_ROOT", "")
    fallback = root if "://" in root else "redis://localhost:6379/0"
    return os.environ.get("SHMFS_REDIS_URL", fallback)


def redacted(url: str) -> str:
    """``url`` with every password in it (``user:pw@`` or ``?password=``) shown as ``***``."""
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            user, _, host = netloc.rpartition("@")
            if ":" in user:
                netloc = f"{user.split(':', 1)[0]}:***@{host}"
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if any(name == "password" for name, _ in query):
            shown = [(name, "***" if name == "password" else value) for name, value in query]
            parts = parts._replace(query=urllib.parse.urlencode(shown, safe="*"))
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        # Not even a URL: hide whatever could be a password rather than show it.
        return re.sub(r"password=[^&#]*", "password=***", re.sub(r":[^:/@]*@", ":***@", url))
