"""How one :class:`~shmfs.segment.Segment` handle turns a value into stored bytes and back.

A handle fixes its codec, its ``secret`` and whether it frames values (a backend's native codec
is stored bare, so its other users, PHP, can read it). With those, a :class:`Coder` encodes a
value for the backend, decodes what a backend read (whatever codec the writer used), refuses to
unpickle bytes that an untrusted user could have written, and decodes a pinned frame in place
for ``Segment.view``. Locking, retries and a closed handle's errors stay with the segment.
"""

from __future__ import annotations

from typing import Any

from shmfs import codecs, frame
from shmfs.backends import Backend
from shmfs.errors import UnsafeSegment

__all__ = ["Coder"]


class Coder:
    """One handle's encoding rules: its codec, ``secret``, framing and piecewise writes."""

    __slots__ = ("_codec", "_framed", "_key", "_pieces", "_secret")

    def __init__(
        self, codec: codecs.Codec, secret: bytes | None, *, framed: bool, pieces: bool, key: int
    ) -> None:
        self._codec = codec
        self._secret = secret
        self._framed = framed
        self._pieces = pieces
        self._key = key

    def encode(self, value: Any) -> bytes | frame.Pieces:
        """``value`` as the backend stores it: framed (or bare, for the native codec)."""
        return frame.encode(
            self._codec, value, self._secret, framed=self._framed, pieces=self._pieces
        )

    def decode(self, backend: Backend, index: int, data: bytes | memoryview | frame.Split) -> Any:
        """The value of the bytes ``backend`` holds at ``index``, in the writer's codec."""
        secret = self._secret
        if (
            backend.native_codec is not None
            and secret is None
            and not isinstance(data, frame.Split)
            and data[:4] != frame.MAGIC
        ):
            native = codecs.get_codec(backend.native_codec)
            return codecs.decode_payload(native, memoryview(data))
        codec, payload = frame.decode(data, secret)
        if codec.executes_code and secret is None and not backend.trusted(index):
            raise self.untrusted(backend, index)
        try:
            return codec.decode(payload)
        except Exception as exc:  # a checked payload that fails to decode is the codec's failure
            error = codecs.decode_error(codec, exc)
            if error is exc:
                raise
            raise error from exc

    def view(self, backend: Backend, index: int, pinned: bytes | memoryview) -> Any:
        """The value of the pinned frame ``pinned``, decoded in place (no copy where it can)."""
        codec, payload = frame.decode(pinned, self._secret)
        if codec.executes_code and self._secret is None and not backend.trusted(index):
            raise self.untrusted(backend, index)
        return frame.view_payload(codec, payload)

    def untrusted(self, backend: Backend, index: int) -> UnsafeSegment:
        """The refusal to unpickle a value at ``index`` that an untrusted user could write."""
        return UnsafeSegment(
            f"segment {self._key} index {index}: refusing to unpickle a value that "
            "an untrusted user could have written (use json/raw/php, secret=, or "
            f"{backend.trust_option})",
            key=self._key,
            index=index,
        )
