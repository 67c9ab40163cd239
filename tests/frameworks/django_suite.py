"""Django's ``BaseCacheTests`` (``tests/cache/tests.py``) against ``shmfs.contrib.django``, in a
process of its own (Django's settings are configured once per process).

``python -m tests.frameworks.django_suite TESTS_DIR LOCATION OPTIONS_JSON RESULT_JSON``: the
unpacked ``tests/`` directory of Django's sdist, the cache's LOCATION, its OPTIONS, and where to
write each test's outcome. The settings are what Django's own suite gives its Redis backend
(``caches_setting_for_tests`` with the "cull" caches excluded), on an in-memory SQLite database
for the tests that cache model instances.
"""

from __future__ import annotations

import json
import sys
import unittest
from typing import Any


def outcomes(result: unittest.TestResult, ran: list[str]) -> dict[str, str]:
    """Each test's name and what became of it: "pass", "fail", "error" or "skip: reason"."""
    found = dict.fromkeys(ran, "pass")
    for test, _ in result.failures:
        found[test.id().rsplit(".", 1)[-1]] = "fail"
    for test, _ in result.errors:
        found[str(getattr(test, "_testMethodName", test.id())).rsplit(".", 1)[-1]] = "error"
    for test, reason in result.skipped:
        found[test.id().rsplit(".", 1)[-1]] = f"skip: {reason}"
    return found


def main(tests_dir: str, location: str, options: dict[str, Any], out: str) -> int:
    sys.path.insert(0, tests_dir)  # "cache" is the app and package of Django's cache tests
    import django  # noqa: PLC0415  # only after the path is set
    from django.conf import settings  # noqa: PLC0415

    settings.configure(
        SECRET_KEY="shmfs-frameworks",
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "cache"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        USE_TZ=True,
        MIDDLEWARE=[],
    )
    django.setup()
    from cache import tests as theirs  # noqa: PLC0415
    from django.test import TestCase, override_settings  # noqa: PLC0415
    from django.test.runner import DiscoverRunner  # noqa: PLC0415

    caches = theirs.caches_setting_for_tests(
        BACKEND="shmfs.contrib.django.ShmfsCache",
        LOCATION=location,
        OPTIONS=options,
        exclude={"cull", "zero_cull"},
    )

    @override_settings(CACHES=caches)
    class ShmfsCacheTests(theirs.BaseCacheTests, TestCase):  # type: ignore[misc,name-defined]
        pass

    ShmfsCacheTests.__module__ = "cache.tests"  # mock.patch targets resolve as for theirs
    runner = DiscoverRunner(verbosity=0, interactive=False)
    runner.setup_test_environment()
    databases = runner.setup_databases()
    try:
        suite = unittest.TestLoader().loadTestsFromTestCase(ShmfsCacheTests)
        ran = [test.id().rsplit(".", 1)[-1] for test in suite]
        result = unittest.TextTestRunner(stream=sys.stderr, verbosity=1).run(suite)
    finally:
        runner.teardown_databases(databases)
        runner.teardown_test_environment()
    with open(out, "w", encoding="utf-8") as file:
        json.dump(outcomes(result, ran), file, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    tests_dir, location, options, out = sys.argv[1:5]
    sys.exit(main(tests_dir, location, json.loads(options), out))
