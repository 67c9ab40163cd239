"""The codec registry: how a value becomes bytes and back.

A codec is named (``codec=`` of :func:`shmfs.attach`) and has an ``id``, which the frame
(``shmfs.frame``) records so that any reader decodes what any writer stored. Each says two
things about itself, separately:

* ``pickle_dialect``: its bytes are a pickle (protocol 5), so the frame may store out-of-band
  buffers after it, the C fast path may write it, and ``Cache`` may compare pickles' heads;
* ``executes_code``: decoding may run code, so the segment checks who could have written the
  bytes before it decodes them (docs/security.md, "What is trusted"). A new codec that runs
  code without being a pickle says ``executes_code=True, pickle_dialect=False``, and is never
  written as a pickle.

``bytes_only`` marks a codec that stores bytes-like values as they are (``raw``).
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import cloudpickle

from shmfs.errors import InvalidArgument, SerializationError

__all__ = [
    "CODECS",
    "PROTOCOL",
    "Codec",
    "decode_error",
    "decode_failed",
    "decode_payload",
    "get_codec",
    "is_plain",
]

#: The pickle protocol of every pickle dialect: 5, for out-of-band buffers.
PROTOCOL: Final = 5


@dataclass(frozen=True, slots=True)
class Codec:
    """One way of turning values into bytes; ``id`` is what the frame records.

    Attributes:
        pickler: For a pickle dialect, the ``pickle.Pickler`` class its values are written
            with when the frame keeps their buffers out of band; ``None`` otherwise.
    """

    name: str
    id: int
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes | memoryview], Any]
    executes_code: bool
    pickle_dialect: bool = False
    bytes_only: bool = False
    pickler: type[pickle.Pickler] | None = None


# Exact types whose pickle.dumps output is what cloudpickle would write: cloudpickle's Pickler is
# built afresh on every call (about 1.5 us), plain pickle costs 0.1 us for these.
_PLAIN_SCALARS: Final = frozenset({str, bytes, int, float, bool, type(None)})
_PLAIN_CONTAINERS: Final = frozenset({list, tuple, dict, set, frozenset})


def is_plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is built only of builtin scalars in small builtin containers."""
    kind = type(value)
    if kind in _PLAIN_SCALARS:
        return True
    if kind not in _PLAIN_CONTAINERS or depth > 3 or len(value) > 64:
        return False
    # Loops, not all() over generators, and scalars tested inline: every put of a container
    # runs this, and a generator per level cost a third of a small dict's put.
    scalars = _PLAIN_SCALARS
    children = (*value, *value.values()) if kind is dict else value
    for child in children:  # a loop: all() would build a generator per call
        if type(child) not in scalars and not is_plain(child, depth + 1):
            return False
    return True


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]  # cloudpickle ships no type hints
    """cloudpickle, except that open files are refused instead of snapshotted."""

    def reducer_override(self, obj: Any) -> Any:
        # cloudpickle copies an open file's content into the pickle; storing a snapshot of a file
        # the user meant to share is a surprise, so we say no (docs/linux-behaviour.md,
        # "Unpicklable").
        if isinstance(obj, io.IOBase):
            raise pickle.PicklingError(f"cannot store an open file ({type(obj).__name__})")
        return super().reducer_override(obj)


def _cloudpickle_dumps(value: Any) -> bytes:
    if is_plain(value):
        return pickle.dumps(value, PROTOCOL)
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=PROTOCOL).dump(value)
    return buffer.getvalue()


def _pickle_dumps(value: Any) -> bytes:
    return pickle.dumps(value, PROTOCOL)


def _json_dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=True, separators=(",", ":")).encode()


def _json_loads(data: bytes | memoryview) -> Any:
    return json.loads(bytes(data))


def _raw_dumps(value: Any) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"the raw codec stores bytes-like values only, not {type(value).__name__}")
    return bytes(value)


def _raw_loads(data: bytes | memoryview) -> bytes:
    return bytes(data)


def _php_dumps(value: Any) -> bytes:
    from shmfs.phpserial import dumps  # noqa: PLC0415  # only PHP users pay for importing it

    return dumps(value)


def _php_loads(data: bytes | memoryview) -> Any:
    from shmfs.phpserial import loads  # noqa: PLC0415  # only PHP users pay for importing it

    return loads(data)


CODECS: Final[dict[str, Codec]] = {
    codec.name: codec
    for codec in (
        Codec(
            "cloudpickle",
            1,
            _cloudpickle_dumps,
            pickle.loads,
            executes_code=True,
            pickle_dialect=True,
            pickler=_Pickler,
        ),
        Codec(
            "pickle",
            2,
            _pickle_dumps,
            pickle.loads,
            executes_code=True,
            pickle_dialect=True,
            pickler=pickle.Pickler,
        ),
        Codec("json", 3, _json_dumps, _json_loads, executes_code=False),
        Codec("raw", 4, _raw_dumps, _raw_loads, executes_code=False, bytes_only=True),
        Codec("php", 5, _php_dumps, _php_loads, executes_code=False),
    )
}


def get_codec(name: str) -> Codec:
    """Return the codec called ``name``.

    Raises:
        InvalidArgument: no codec has that name.
    """
    try:
        return CODECS[name]
    except KeyError:
        known = ", ".join(sorted(CODECS))
        raise InvalidArgument(f"unknown codec {name!r}; choose one of: {known}") from None


def decode_payload(codec: Codec, payload: bytes | memoryview) -> Any:
    """Run ``codec``'s decoder on a checked payload.

    Raises:
        SerializationError: the codec cannot decode the bytes (a missing module, say).
    """
    try:
        return codec.decode(payload)
    except SerializationError:
        raise
    except Exception as exc:  # a checked payload that fails to decode is the codec's failure
        raise decode_failed(codec, exc) from exc


def decode_error(codec: Codec, exc: Exception) -> Exception:
    """The error a get raises when ``codec``'s decoder raised ``exc`` on a checked payload:
    ``exc`` itself if it is a SerializationError, else :func:`decode_failed`'s."""
    return exc if isinstance(exc, SerializationError) else decode_failed(codec, exc)


def decode_failed(codec: Codec, exc: Exception) -> SerializationError:
    """The error for a checked payload that ``codec`` cannot decode (a missing module, say)."""
    return SerializationError(f"cannot decode a stored {codec.name} value: {exc}", codec=codec.name)
