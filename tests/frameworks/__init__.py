"""Django's and cachelib's own cache test suites, run against shmfs's framework backends.

``python -m tests.frameworks`` downloads the pinned source distributions (``sources.py``), takes
the cache tests out of them, and runs them on each backend (``__main__.py``); the tests of theirs
that cannot pass are listed with their reasons in ``expected.py``, and the run fails if any other
test fails or is skipped, or if a listed one passes.
"""
