"""Framework cache backends on :class:`shmfs.Cache`: ``shmfs.contrib.django`` (a Django cache
backend), ``shmfs.contrib.cachelib`` (a ``cachelib`` cache, and so a Flask-Caching backend) and
``shmfs.contrib.flask`` (Flask-Caching's factory for it).

Each is written against ``Cache``'s public calls only, and follows its framework's semantics,
not ``Cache``'s: the frameworks' own cache test suites run against them (``python -m
tests.frameworks``). Importing this package imports neither framework.
"""

from __future__ import annotations

import pickle

from shmfs.errors import SerializationError

__all__ = ["UnpicklableValue"]


class UnpicklableValue(SerializationError, pickle.PicklingError):
    """A value the cache's codec cannot encode, raised by the framework backends: a
    :class:`~shmfs.SerializationError` that is also the ``pickle.PicklingError`` Django and
    cachelib promise their callers (``except pickle.PickleError`` keeps working). Nothing was
    stored, and the old value stays."""

    @classmethod
    def of(cls, exc: SerializationError) -> UnpicklableValue:
        """The same failure as ``exc``, message and context kept (raise it ``from exc``)."""
        context = {name: value for name, value in vars(exc).items() if name != "message"}
        return cls(exc.message, **context)
