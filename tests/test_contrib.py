"""The framework backends (``shmfs.contrib``) on every backend: shared by several real worker
processes (one's set seen by the others, ``incr`` exact, ``get_or_set``/``add`` races with one
winner, a ``cache_page``/``@cache.cached`` page rendered once for every worker), and the
semantics their frameworks' own suites do not pin down (``python -m tests.frameworks`` runs
those suites: Django's ``BaseCacheTests`` and cachelib's common tests)."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import pickle
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

import shmfs
from shmfs import hotpath
from shmfs.cache import entry as cache_entry
from shmfs.contrib import UnpicklableValue
from shmfs.contrib import cachelib as shmfs_cachelib
from shmfs.contrib import django as shmfs_django
from shmfs.contrib import flask as shmfs_flask
from tests.contrib_workers import django_worker, flask_worker
from tests.workers import Children

WORKERS = 3
ROUNDS = 150


@pytest.fixture
def ref(backend: str, where: str, key: int) -> dict[str, Any]:
    """What a worker needs to open the test's cache."""
    return {
        "key": key,
        "size": 1 << 20,
        "backend": backend,
        "root": where,
        "pure": not hotpath.available(),
    }


@pytest.fixture
def made(ref: dict[str, Any]) -> Iterator[list[shmfs.Cache]]:
    """The Caches behind the backends a test opens: closed, and the segment destroyed, after."""
    caches: list[shmfs.Cache] = []
    yield caches
    for cache in caches:
        cache.close()
    shmfs.attach(ref["key"], backend=ref["backend"], root=ref["root"]).destroy()


@pytest.fixture
def django_cache(
    ref: dict[str, Any], made: list[shmfs.Cache]
) -> Callable[..., shmfs_django.ShmfsCache]:
    """Makes a Django backend on the test's cache, as Django does from a CACHES entry."""

    def make(**params: Any) -> shmfs_django.ShmfsCache:
        options = {"size": ref["size"], "backend": ref["backend"], "root": ref["root"]}
        backend = shmfs_django.ShmfsCache(ref["key"], {"OPTIONS": options, **params})
        made.append(backend.cache)
        return backend

    return make


@pytest.fixture
def cachelib_cache(
    ref: dict[str, Any], made: list[shmfs.Cache]
) -> Callable[..., shmfs_cachelib.ShmfsCache]:
    """Makes a cachelib cache on the test's cache."""

    def make(**kwargs: Any) -> shmfs_cachelib.ShmfsCache:
        options = {"size": ref["size"], "backend": ref["backend"], "root": ref["root"]}
        cache = shmfs_cachelib.ShmfsCache(ref["key"], **options, **kwargs)
        made.append(cache.cache)
        return cache

    return make


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A fake clock for the cache: tests move ``now[0]`` instead of sleeping."""
    moment = [1_700_000_000.0]
    monkeypatch.setattr(cache_entry, "clock", lambda: moment[0])
    return moment


def run_workers(target: Any, ref: dict[str, Any], spawn_ctx: Any) -> list[dict[str, Any]]:
    start, first_page = spawn_ctx.Event(), spawn_ctx.Event()
    children = Children(spawn_ctx)
    try:
        for slot in range(WORKERS):
            children.start(target, ref, slot, ROUNDS, start, first_page)
        start.set()
        return children.results(90)
    finally:
        children.stop()


# ----------------------------------------------------------------------------- shared


def test_django_workers_share_one_cache(
    ref: dict[str, Any], django_cache: Callable[..., Any], spawn_ctx: Any
) -> None:
    cache = django_cache()
    cache.set("greeting", "set by the parent")
    cache.set("counter", 0)
    results = run_workers(django_worker, ref, spawn_ctx)
    assert [r["seen"] for r in results] == ["set by the parent"] * WORKERS
    assert cache.get_many([f"from-{slot}" for slot in range(WORKERS)]) == {
        f"from-{slot}": slot for slot in range(WORKERS)
    }
    assert cache.get("counter") == WORKERS * ROUNDS
    # get_or_set: whoever computed first, every worker got the one stored value.
    (computed,) = {r["computed"] for r in results}
    assert computed == cache.get("computed") and computed.startswith("computed by ")
    # cache_page: the first worker rendered the page, the others were served its copy.
    first = f"rendered by {results[0]['pid']}"
    assert [r["page"] for r in results] == [first] * WORKERS


def test_flask_workers_share_one_cache(
    ref: dict[str, Any], cachelib_cache: Callable[..., Any], spawn_ctx: Any
) -> None:
    cache = cachelib_cache(key_prefix="app:")  # the workers' CACHE_KEY_PREFIX
    cache.set("greeting", "set by the parent")
    results = run_workers(flask_worker, ref, spawn_ctx)
    assert [r["seen"] for r in results] == ["set by the parent"] * WORKERS
    assert cache.get_many(*(f"from-{slot}" for slot in range(WORKERS))) == list(range(WORKERS))
    assert cache.get("counter") == WORKERS * ROUNDS
    assert sorted(r["won"] for r in results) == [False] * (WORKERS - 1) + [True]
    winner = next(slot for slot, r in enumerate(results) if r["won"])
    assert cache.get("winner") == winner
    first = f"rendered by {results[0]['pid']}"
    assert [r["page"] for r in results] == [first] * WORKERS


# ----------------------------------------------------------------------------- Django


def test_django_timeouts(django_cache: Callable[..., Any], now: list[float]) -> None:
    cache = django_cache(TIMEOUT=10)
    forever = django_cache(TIMEOUT=None)
    cache.set("default", 1)  # DEFAULT_TIMEOUT: TIMEOUT
    forever.set("default-none", 1)  # TIMEOUT None: for ever
    cache.set("none", 1, None)
    cache.set("float", 1, 2.5)
    cache.set("gone", 1)
    cache.set("gone", 2, 0)  # 0 removes what was there
    cache.set("negative", 1)
    cache.set("negative", 2, -5)
    assert not cache.has_key("gone") and not cache.has_key("negative")
    assert cache.add("free", 1, 0) is True and not cache.has_key("free")  # free, not stored
    assert cache.add("default", 2, 0) is False and cache.get("default") == 1
    now[0] += 2.6
    assert cache.get("float") is None and cache.get("default") == 1
    cache.set("counter", 5, 20)
    assert cache.incr("counter", 3) == 8  # keeps its expiry (20 s from the set)
    now[0] += 7.5
    assert cache.get("default") is None
    assert cache.get("none") == 1 and forever.get("default-none") == 1
    assert cache.touch("none", 1) is True
    assert cache.touch("counter") is True  # DEFAULT_TIMEOUT again: 10 s from now
    now[0] += 1.5
    assert cache.get("none") is None and cache.get("counter") == 8
    now[0] += 9
    assert cache.get("counter") is None
    cache.set("t", 1)
    assert cache.touch("t", None) is True  # for ever
    now[0] += 10**6
    assert cache.get("t") == 1
    assert cache.touch("t", 0) is True and not cache.has_key("t")
    assert cache.touch("t") is False


def test_django_incr_is_django_s(django_cache: Callable[..., Any]) -> None:
    cache = django_cache()
    with pytest.raises(ValueError, match="Key 'absent' not found"):
        cache.incr("absent")
    cache.set("text", "a")
    with pytest.raises(TypeError):
        cache.incr("text")
    assert cache.get("text") == "a"
    cache.set("n", 1.5)
    assert cache.decr("n", 2) == -0.5


def test_django_refuses_culling_options_and_no_location(ref: dict[str, Any]) -> None:
    for params in ({"OPTIONS": {"MAX_ENTRIES": 10}}, {"OPTIONS": {"CULL_FREQUENCY": 2}}):
        with pytest.raises(ImproperlyConfigured, match="bounded by bytes"):
            shmfs_django.ShmfsCache(ref["key"], params)
    with pytest.raises(ImproperlyConfigured, match="needs a LOCATION"):
        shmfs_django.ShmfsCache("", {})


def test_unencodable_values_raise_a_pickle_error_and_keep_the_old(
    django_cache: Callable[..., Any], cachelib_cache: Callable[..., Any]
) -> None:
    django, flaskish = django_cache(), cachelib_cache()
    for cache in (django, flaskish):
        cache.set("k", "old")
        for write in (cache.set, cache.add):
            with pytest.raises(pickle.PickleError) as raised:
                write("k" if write == cache.set else "new", threading.Lock())
            assert isinstance(raised.value, UnpicklableValue)
            assert isinstance(raised.value, shmfs.SerializationError)
        assert cache.get("k") == "old"
    error = pickle.loads(pickle.dumps(UnpicklableValue("cannot encode", codec="cloudpickle")))
    assert isinstance(error, UnpicklableValue) and error.codec == "cloudpickle"


def test_batches_go_through_the_cache_s_batch_calls_all_or_nothing(
    django_cache: Callable[..., Any],
    cachelib_cache: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    django, flaskish = django_cache(), cachelib_cache()
    batches: list[str] = []
    for name in ("get_many", "set_many"):
        real = getattr(shmfs.Cache, name)

        def counted(self: Any, *args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            batches.append(_name)
            return _real(self, *args, **kw)

        monkeypatch.setattr(shmfs.Cache, name, counted)
    assert django.set_many({"a": 1, "b": 2}) == []
    assert django.get_many(["a", "b", "c"]) == {"a": 1, "b": 2}
    with pytest.raises(pickle.PickleError):
        django.set_many({"a": 9, "lock": threading.Lock()})
    assert django.get_many(["a", "lock"]) == {"a": 1}
    assert flaskish.set_many({"x": 1, "y": [2]}) == ["x", "y"]
    assert flaskish.get_many("x", "nope", "y") == [1, None, [2]]
    with pytest.raises(pickle.PickleError):
        flaskish.set_many({"x": 9, "lock": threading.Lock()})
    assert flaskish.get_many("x", "lock") == [1, None]
    assert batches == ["set_many", "get_many", "set_many", "get_many"] * 2


def test_django_async_methods_run_in_the_loop_s_thread(
    django_cache: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = django_cache()
    threads = set()
    read = cache.cache.get

    def get(*args: Any) -> Any:
        threads.add(threading.get_ident())
        return read(*args)

    monkeypatch.setattr(cache.cache, "get", get)

    async def use() -> list[Any]:
        await cache.aset("a", 1)
        await cache.aset_many({"b": 2, "c": 3})
        answers = [
            await cache.aget("a"),
            await cache.aget_many(["a", "b", "x"]),
            await cache.aadd("a", 9),
            await cache.aincr("a", 10),
            await cache.adecr("a"),
            await cache.ahas_key("b"),
            await cache.atouch("b", None),
            await cache.aget_or_set("d", lambda: 4),
            await cache.adelete("b"),
        ]
        await cache.adelete_many(["c"])
        answers.append(await cache.aget_many(["b", "c", "d"]))
        await cache.aclear()
        answers.append(await cache.ahas_key("d"))
        await cache.aclose()
        return [*answers, threading.get_ident()]

    *answers, loop_thread = asyncio.run(use())
    assert answers == [1, {"a": 1, "b": 2}, False, 11, 10, True, True, 4, True, {"d": 4}, False]
    assert threads == {loop_thread}


def test_django_keys_go_through_prefix_version_and_key_function(
    django_cache: Callable[..., Any],
) -> None:
    plain = django_cache()
    prefixed = django_cache(KEY_PREFIX="app", VERSION=3)
    custom = django_cache(KEY_FUNCTION=lambda key, prefix, version: f"custom:{key}")
    plain.set("k", "plain")
    prefixed.set("k", "prefixed")
    custom.set("k", "custom")
    assert (plain.get("k"), prefixed.get("k"), custom.get("k")) == ("plain", "prefixed", "custom")
    assert plain.cache.get("app:3:k") == "prefixed" and plain.cache.get("custom:k") == "custom"
    assert prefixed.get("k", version=1) is None


def test_django_key_warnings_are_django_s(django_cache: Callable[..., Any]) -> None:
    from django.core.cache.backends.base import memcache_key_warnings  # noqa: PLC0415

    cache = django_cache()
    keys = ["plain:1:key", "a" * 250, "a" * 251, "a b", "a\tb", "a\x00", "a\x1f", "a\x7f", "~!"]
    keys += ["é", "é" * 251, "é\x01", "\u2028", "\x80", "清 x"]
    for key in keys:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cache.validate_key(key)
        assert [str(w.message) for w in caught] == list(memcache_key_warnings(key)), repr(key)


# ----------------------------------------------------------------------------- cachelib


def test_cachelib_timeouts(cachelib_cache: Callable[..., Any], now: list[float]) -> None:
    cache = cachelib_cache(default_timeout=10)
    cache.set("default", 1)
    cache.set("zero", 1, 0)  # 0: for ever
    cache.set("delta", 1, dt.timedelta(seconds=2))
    cache.set("gone", 1)
    assert cache.set("gone", 2, -1) is True and not cache.has("gone")
    assert cache.add("free", 1, -1) is True and not cache.has("free")
    assert cache.inc("count") == 1  # starts from 0, gets default_timeout
    now[0] += 2.5
    assert cache.get("delta") is None and cache.get("default") == 1
    assert cache.inc("count", 4) == 5  # keeps its expiry
    now[0] += 8
    assert cache.get("default") is None and cache.get("count") is None
    assert cache.get("zero") == 1
    forever = cachelib_cache(default_timeout=0)
    forever.set("k", 1)
    now[0] += 10**7
    assert forever.get("k") == 1 and cache.get("zero") == 1
    assert math.isinf(cache._ttl(0))


def test_cachelib_inc_of_a_non_number_changes_nothing(cachelib_cache: Callable[..., Any]) -> None:
    cache = cachelib_cache()
    cache.set("text", "a")
    with pytest.raises(TypeError):
        cache.inc("text")
    assert cache.get("text") == "a"
    cache.set("falsy", None)
    assert cache.dec("falsy", 2) == -2  # as cachelib's own inc: (get() or 0) + delta


def test_cachelib_serializer_stores_its_bytes(cachelib_cache: Callable[..., Any]) -> None:
    from cachelib.serializers import JSONSerializer  # noqa: PLC0415

    cache = cachelib_cache(key_prefix=lambda: "p:")
    cache.serializer = JSONSerializer()
    cache.set("k", {"a": [1, 2]})
    assert cache.cache.get("p:k") == JSONSerializer().dumps({"a": [1, 2]})
    assert cache.get("k") == {"a": [1, 2]}
    cache.set("n", 1)
    assert cache.inc("n", 2) == 3 and cache.cache.get("p:n") == JSONSerializer().dumps(3)
    assert cache.add("k", 5) is False and cache.add("m", 5) is True and cache.get("m") == 5


def test_flask_caching_builds_it_from_its_config(ref: dict[str, Any], made: list[Any]) -> None:
    from flask import Flask  # noqa: PLC0415
    from flask_caching import Cache  # noqa: PLC0415

    options = {"name": ref["key"], "size": ref["size"], "backend": ref["backend"]}
    options["root"] = ref["root"]
    built = {}
    for path in ("shmfs.contrib.flask.factory", "shmfs.contrib.cachelib.ShmfsCache"):
        app = Flask(__name__)
        app.config.update(
            CACHE_TYPE=path,
            CACHE_DEFAULT_TIMEOUT=30,
            CACHE_KEY_PREFIX="v1:",
            CACHE_OPTIONS=options,
        )
        flask_cache = Cache(app)
        backend = built[path] = flask_cache.cache
        made.append(backend.cache)
        assert isinstance(backend, shmfs_cachelib.ShmfsCache)
        assert backend.default_timeout == 30
        with app.app_context():
            flask_cache.set(path, "v")
            assert flask_cache.get(path) == "v"
    # The factory takes CACHE_KEY_PREFIX; the class, built by Flask-Caching 2.5 with
    # CACHE_OPTIONS alone because its path contains "cachelib", does not (docs/cache.md says so).
    assert built["shmfs.contrib.flask.factory"].key_prefix == "v1:"
    assert built["shmfs.contrib.cachelib.ShmfsCache"].key_prefix == ""
    assert backend.cache.get("v1:shmfs.contrib.flask.factory") == "v"
    # Flask-Caching 2.0 calls any CACHE_TYPE that is not its own class this way:
    made_by_factory = shmfs_flask.factory(
        app,
        {"CACHE_KEY_PREFIX": "v2:"},
        [ref["key"]],
        {"default_timeout": 5, "size": ref["size"], "backend": ref["backend"], "root": ref["root"]},
    )
    made.append(made_by_factory.cache)
    assert made_by_factory.key_prefix == "v2:" and made_by_factory.default_timeout == 5
    assert made_by_factory.get("shmfs.contrib.flask.factory") is None
