"""Child-process targets for the framework backend tests: each child is one web worker, a Django
or a Flask application of its own, configured as an application would be, reaching the shared
cache only through its framework.

Each takes the cache's reference (key, size, backend, root) and hands results back as data.
"""

from __future__ import annotations

import os
from typing import Any

from shmfs import hotpath


def _options(ref: dict[str, Any]) -> dict[str, Any]:
    if ref.get("pure"):  # the parent runs without the C fast path: so does this child
        hotpath._hot = None
    return {"size": ref["size"], "backend": ref["backend"], "root": ref["root"]}


def django_worker(
    ref: dict[str, Any], slot: int, rounds: int, start: Any, first_page: Any
) -> dict[str, Any]:
    """A Django worker: reads what the parent set, sets its own key, increments the shared
    counter ``rounds`` times, races the others in ``get_or_set``, and requests a
    ``cache_page`` view (slot 0 first, the others once ``first_page`` is set)."""
    import django  # noqa: PLC0415  # each worker is an application of its own
    from django.conf import settings  # noqa: PLC0415

    settings.configure(
        SECRET_KEY="shmfs-tests",
        ALLOWED_HOSTS=["testserver"],
        USE_I18N=False,
        CACHES={
            "default": {
                "BACKEND": "shmfs.contrib.django.ShmfsCache",
                "LOCATION": ref["key"],
                "TIMEOUT": 60,
                "OPTIONS": _options(ref),
            }
        },
    )
    django.setup()
    from django.core.cache import cache  # noqa: PLC0415
    from django.http import HttpResponse  # noqa: PLC0415
    from django.test import RequestFactory  # noqa: PLC0415
    from django.views.decorators.cache import cache_page  # noqa: PLC0415

    @cache_page(60)
    def page(request: Any) -> HttpResponse:
        return HttpResponse(f"rendered by {os.getpid()}")

    assert start.wait(30), "the test never started the workers"
    seen = cache.get("greeting")
    cache.set(f"from-{slot}", slot)
    for _ in range(rounds):
        cache.incr("counter")
    computed = cache.get_or_set("computed", lambda: f"computed by {slot}")
    if slot != 0:
        assert first_page.wait(30), "the first worker never served the page"
    body = page(RequestFactory().get("/page")).content.decode()
    if slot == 0:
        first_page.set()
    return {"seen": seen, "computed": computed, "page": body, "pid": os.getpid()}


def flask_worker(
    ref: dict[str, Any], slot: int, rounds: int, start: Any, first_page: Any
) -> dict[str, Any]:
    """A Flask worker with Flask-Caching configured on ``shmfs.contrib.flask.factory``:
    the same steps as :func:`django_worker`, with ``add`` for the race and ``@cache.cached`` for
    the page."""
    from flask import Flask  # noqa: PLC0415
    from flask_caching import Cache  # noqa: PLC0415

    app = Flask(__name__)
    app.config.update(
        CACHE_TYPE="shmfs.contrib.flask.factory",
        CACHE_DEFAULT_TIMEOUT=60,
        CACHE_KEY_PREFIX="app:",
        CACHE_OPTIONS={"name": ref["key"], **_options(ref)},
    )
    cache = Cache(app)

    @app.route("/page")
    @cache.cached(timeout=60)
    def page() -> str:
        return f"rendered by {os.getpid()}"

    assert start.wait(30), "the test never started the workers"
    with app.app_context():
        seen = cache.get("greeting")
        cache.set(f"from-{slot}", slot)
        for _ in range(rounds):
            cache.cache.inc("counter")
        won = cache.add("winner", slot)
    if slot != 0:
        assert first_page.wait(30), "the first worker never served the page"
    body = app.test_client().get("/page").get_data(as_text=True)
    if slot == 0:
        first_page.set()
    return {"seen": seen, "won": won, "page": body, "pid": os.getpid()}
