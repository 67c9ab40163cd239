"""Cache keys: names to segment keys, cache keys to variable indices, calls to memoize keys.

Everything here is a pure function of its input, stable across processes, hosts and Python
versions: BLAKE2b over a canonical encoding, never Python's ``hash()`` (salted per process for
str and bytes, see ``PYTHONHASHSEED``).

The canonical form of a key is a *str*, type-tagged so that ``1``, ``"1"`` and ``b"1"`` stay
three keys, and reversible, so iteration can give back the original key:

========  ==========================================================
str       ``"s" + text``
bytes     ``"b" + data.decode("latin-1")`` (one char per byte)
int       ``"i" + decimal digits``
tuple     ``"t" + "".join(f"{len(part)}:{part}")`` over the parts' canonical forms
========  ==========================================================

A str rather than bytes because the json and php codecs cannot store bytes, and an entry carries
its canonical key so that keys whose hashes collide are told apart.
"""

from __future__ import annotations

import hashlib
import math
import pickle
from collections.abc import Callable, Mapping
from typing import Any, Final

from shmfs import hotpath
from shmfs.errors import InvalidKeyType

__all__ = [
    "FIRST_ENTRY",
    "SlotMemo",
    "call_key",
    "canonical",
    "decode_canonical",
    "key_index",
    "name_key",
    "slot",
    "slot_memo",
]

#: Indices below this are the cache's own bookkeeping (see ``shmfs.cache``); entries live at
#: ``FIRST_ENTRY`` and above, memoize leases at the negated index of their entry.
FIRST_ENTRY: Final = 16
_SPAN: Final = (1 << 63) - FIRST_ENTRY
_KEY_SPAN: Final = (1 << 31) - 1  # keys 1 .. 2**31 - 1: positive signed 32-bit, never 0


def name_key(name: int | str) -> int:
    """The segment key of a cache name.

    An int is the key itself (``shmfs.attach`` checks its range). A str maps to
    ``int.from_bytes(blake2b(b"shmfs.Cache:" + name.encode(), digest_size=4), "big")
    % (2**31 - 1) + 1``: the same key in every process and on every version, from 1 to 2**31 - 1.

    Raises:
        InvalidKeyType: ``name`` is neither an int nor a str.
    """
    if type(name) is int:
        return name
    if not isinstance(name, str):
        raise InvalidKeyType(
            f"a cache name is an int (the segment key) or a str, not {type(name).__name__}",
            key=repr(name),
        )
    digest = hashlib.blake2b(b"shmfs.Cache:" + name.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % _KEY_SPAN + 1


def canonical(key: Any) -> str:
    """The canonical str of a cache key (see the module docstring).

    Subclasses count as their base type, as they compare equal to it (a ``StrEnum`` member is
    its str, an ``IntEnum`` member its int); iteration gives back the base type.

    Raises:
        InvalidKeyType: ``key`` is not a str, bytes, int or a tuple of them (bools and floats
            are refused: ``True == 1`` and ``1.0 == 1`` would make them ambiguous).
    """
    kind = type(key)
    if kind is str:
        return "s" + key  # type: ignore[no-any-return]  # a str, by the test above
    if kind is int:
        return "i" + str(key)
    if kind is bytes:
        return "b" + key.decode("latin-1")  # type: ignore[no-any-return]  # bytes, as above
    if kind is tuple:
        return "t" + "".join(f"{len(part)}:{part}" for part in map(canonical, key))
    return canonical(_base(key))


def _base(key: Any) -> str | int | bytes | tuple[Any, ...]:
    """``key`` as its base type (a subclass compares equal to it), or ``InvalidKeyType``."""
    if isinstance(key, str):
        return str.__str__(key)
    if isinstance(key, int) and not isinstance(key, bool):
        return int.__index__(key)
    if isinstance(key, bytes):
        return bytes(key)
    if isinstance(key, tuple):
        return tuple(key)
    raise InvalidKeyType(
        f"cache keys are str, bytes, int or tuples of them, not {type(key).__name__} ({key!r:.80})",
        key=repr(key),
    )


def decode_canonical(text: str) -> Any:
    """The key whose canonical str is ``text`` (the inverse of :func:`canonical`)."""
    tag, body = text[:1], text[1:]
    if tag == "s":
        return body
    if tag == "b":
        return body.encode("latin-1")
    if tag == "i":
        return int(body)
    if tag == "t":
        parts = []
        pos = 0
        while pos < len(body):
            colon = body.index(":", pos)
            length = int(body[pos:colon])
            parts.append(decode_canonical(body[colon + 1 : colon + 1 + length]))
            pos = colon + 1 + length
        return tuple(parts)
    raise ValueError(f"not a canonical cache key: {text!r:.80}")


def key_index(text: str) -> int:
    """The variable index of the entry whose canonical key is ``text``: 64 bits of BLAKE2b,
    folded into ``FIRST_ENTRY .. 2**63 - 1``.

    This is the cache's test seam: replace ``shmfs.cache.keys.key_index`` (before opening the
    cache, which remembers the indices of recent keys) to force hash collisions.
    """
    hasher = _BLAKE2B_8.copy()  # a copy costs half of a new one made with its parameters
    hasher.update(text.encode("utf-8", "surrogatepass"))
    return int.from_bytes(hasher.digest(), "big") % _SPAN + FIRST_ENTRY


_BLAKE2B_8: Final = hashlib.blake2b(digest_size=8)
_KEY_INDEX: Final = key_index
_MEMO_TYPES: Final = frozenset({str, bytes, int})  # keys whose slot a memo keeps


def slot(key: Any) -> tuple[str, int]:
    """``(canonical(key), key_index(canonical(key)))``.

    Raises:
        InvalidKeyType: as :func:`canonical`.
    """
    text = canonical(key)
    return text, key_index(text)


class SlotMemo:
    """:func:`slot` with memory: the slots of recent str, bytes and int keys, at most ``limit``
    of them, since hashing a key costs as much as the rest of a cache hit. Tuples and
    subclasses are not remembered: ``True == 1`` and ``(True,) == (1,)``, yet those are no
    keys (:func:`canonical` refuses bools), so they must never be found here.

    A full memo starts afresh if at least half of its lookups since it was last emptied were
    hits (the working set moved). If not, the keys are too many or too scattered for it, and
    storing each miss (then emptying the memo of them) would cost more than the hits save, so
    it *rests*: it keeps what it holds and stores nothing for ``REST`` times ``limit`` misses,
    then starts afresh to try again. :func:`slot_memo` gives the C module's twin where it can.
    """

    REST: Final = 4

    def __init__(self, fallback: Callable[[Any], tuple[str, int]], limit: int) -> None:
        self._fallback = fallback
        self._limit = limit
        self._memo: dict[Any, tuple[str, int]] = {}
        self._hits = self._misses = self._resting = 0

    def slot(self, key: Any) -> tuple[str, int]:
        """``slot(key)``, remembered."""
        if type(key) not in _MEMO_TYPES:
            return self._fallback(key)
        found = self._memo.get(key)
        if found is not None:
            self._hits += 1
            return found
        found = self._fallback(key)
        if self._admit():
            self._memo[key] = found
        return found

    def _admit(self) -> bool:
        """Whether a missed key is to be stored; empties the memo when its turn comes."""
        if self._resting:
            self._resting -= 1
            if self._resting:
                return False
            self.clear()
        elif len(self._memo) >= self._limit:
            if self._hits < self._misses:
                self._resting = self.REST * self._limit
                return False
            self.clear()
        self._misses += 1
        return True

    def clear(self) -> None:
        """Forget every key."""
        self._memo.clear()
        self._hits = self._misses = self._resting = 0

    @property
    def size(self) -> int:
        """How many keys are remembered now."""
        return len(self._memo)


def slot_memo(limit: int) -> SlotMemo:
    """A :class:`SlotMemo` of ``limit`` keys: in C when the C module is in use (a remembered
    key costs a dict lookup, another one BLAKE2b in C, bit for bit this module's, so processes
    with and without the module find the same entries), unless :func:`key_index` is replaced:
    the test seam must see every key.
    """
    key_slots = hotpath.key_slots() if key_index is _KEY_INDEX else None
    if key_slots is not None:
        memo: SlotMemo = key_slots(slot, limit)  # the same ``slot`` method, in C
        return memo
    return SlotMemo(slot, limit)


# ------------------------------------------------------------------------------ memoize keys


def call_key(
    function: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any], typed: bool
) -> tuple[str, str, bytes]:
    """The cache key of one call: ``("shmfs.memoize", "module.qualname", digest of the
    arguments)``.

    The arguments are encoded canonically, not pickled: equal arguments give equal keys in every
    process (a pickle of a set of str differs between processes, since str hashes are salted),
    and, unless ``typed``, ``f(1)``, ``f(1.0)`` and ``f(True)`` share a result, as with
    ``functools.lru_cache``. Keyword order does not matter. Arguments of other types are
    identified by their pickle, so equal objects that pickle differently only cost a miss.

    Raises:
        InvalidKeyType: an argument can be neither encoded nor pickled.
    """
    out = bytearray()
    _encode_arg(args, out, typed)
    _encode_arg(dict(kwargs), out, typed)
    name = f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', '?')}"
    return ("shmfs.memoize", name, hashlib.blake2b(out, digest_size=16).digest())


def _encode_arg(value: Any, out: bytearray, typed: bool) -> None:  # noqa: PLR0912  # a type table
    """Append the canonical bytes of one memoize argument to ``out``."""
    kind = type(value)
    if typed and kind in (bool, int, float):
        out += kind.__name__[0].encode()
    if value is None:
        out += b"N"
    elif kind is bool or kind is int:
        out += b"i%d;" % value
    elif kind is float:
        if not typed and math.isfinite(value) and value.is_integer():
            out += b"i%d;" % int(value)  # 1.0 == 1: the same call unless typed
        else:
            out += b"f" + repr(value).encode() + b";"
    elif kind is str:
        data = value.encode("utf-8", "surrogatepass")
        out += b"s%d:" % len(data) + data
    elif kind is bytes or kind is bytearray:
        out += b"b%d:" % len(value) + bytes(value)
    elif kind is tuple or kind is list:
        out += (b"t" if kind is tuple else b"l") + b"%d:" % len(value)
        for item in value:
            _encode_arg(item, out, typed)
    elif kind is dict:
        items = sorted(_encoded(k, typed) + _encoded(v, typed) for k, v in value.items())
        out += b"d%d:" % len(items) + b"".join(items)
    elif kind is set or kind is frozenset:
        members = sorted(_encoded(item, typed) for item in value)
        out += b"S%d:" % len(members) + b"".join(members)
    else:
        try:
            data = pickle.dumps(value, 5)
        except Exception as exc:  # pickling runs arbitrary __reduce__ code: any error
            raise InvalidKeyType(
                f"memoize cannot make a key of a {kind.__qualname__} argument: it is neither a "
                f"plain value nor picklable ({exc})",
                key=repr(value)[:80],
            ) from exc
        out += b"p%d:" % len(data) + data


def _encoded(value: Any, typed: bool) -> bytes:
    out = bytearray()
    _encode_arg(value, out, typed)
    return bytes(out)
