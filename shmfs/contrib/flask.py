"""Flask-Caching's factory for :class:`shmfs.contrib.cachelib.ShmfsCache`.

    app.config["CACHE_TYPE"] = "shmfs.contrib.flask.factory"
    app.config["CACHE_OPTIONS"] = {"name": "myapp", "size": 256 * 2**20}

Flask-Caching calls a ``CACHE_TYPE`` that is not one of its own backend classes as
``factory(app, config, args, options)``, except that from some 2.x release on it calls a path
containing "cachelib" with ``(*args, **options)`` instead: so the factory lives here, in a module
whose path does not, and is called the same way by every Flask-Caching 2.x. It imports neither
Flask nor Flask-Caching.
"""

from __future__ import annotations

from typing import Any

from shmfs.contrib.cachelib import ShmfsCache

__all__ = ["factory"]


def factory(
    app: Any, config: dict[str, Any], args: list[Any], kwargs: dict[str, Any]
) -> ShmfsCache:
    """The cache Flask-Caching's settings describe: ``CACHE_ARGS`` (``args``: the cache's name
    first), ``CACHE_OPTIONS`` with ``CACHE_DEFAULT_TIMEOUT`` (``kwargs``: ``name``, ``size``,
    ``backend``, ``root``...), and ``CACHE_KEY_PREFIX`` as ``key_prefix``.

    Raises:
        The errors of :class:`shmfs.contrib.cachelib.ShmfsCache`.
    """
    return ShmfsCache.factory(app, config, args, kwargs)
