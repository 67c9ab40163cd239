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

    __slots__ = ("_codec", "_framed", "_key", "_missing", "_pieces", "_secret")

    def __init__(
        self, codec: codecs.Codec, secret: bytes | None, *, framed: bool, pieces: bool, key: int
    ) -> None:
        self._codec = codec
        self._secret = secret
        self._framed = framed
        self._pieces = pieces
        self._key = key
        # Set (to where the secret should have come from) on a handle of a signed segment
        # whose process supplied no secret: every value is then refused.
        self._missing: str | None = None

    def lacks_secret(self, source: str) -> None:
        """Refuse every value from now on: the segment signs its values and this handle has
        no secret (an unpickled handle whose process did not set ``$source``)."""
        self._missing = source
        self._framed = True

    def signing(self) -> bytes | None:
        """The secret to sign and check values with, or ``None``.

        Raises:
            UnsafeSegment: the segment is signed and this handle has no secret.
        """
        if self._missing is not None and self._secret is None:
            raise UnsafeSegment(
                f"segment {self._key} signs its values, and this handle was unpickled without "
                f"its secret (a pickle carries none): set ${self._missing} in this process, or "
                "attach with secret=",
                key=self._key,
            )
        return self._secret

    def unsigned_codec(self) -> int | None:
        """The id of the codec this handle frames values in, unsigned; ``None`` if it signs
        them (or refuses them for want of a secret) or stores them bare: a frame built
        elsewhere from that id alone is then not what this handle would write."""
        if self._secret is not None or self._missing is not None or not self._framed:
            return None
        return self._codec.id

    def encode(self, value: Any, index: int | None = None) -> bytes | frame.Pieces:
        """``value`` as the backend stores it at ``index``: framed (or bare, for the native
        codec); a signature covers the segment key and ``index``, so it is required with a
        secret."""
        secret = self._secret
        if secret is None and self._missing is not None:
            secret = self.signing()
        at = None if secret is None or index is None else (self._key, index)
        return frame.encode(
            self._codec, value, secret, framed=self._framed, pieces=self._pieces, at=at
        )

    def decode(self, backend: Backend, index: int, data: bytes | memoryview | frame.Split) -> Any:
        """The value of the bytes ``backend`` holds at ``index``, in the writer's codec."""
        secret = self._secret
        if secret is None and self._missing is not None:  # inline: every get not C's runs this
            secret = self.signing()
        if (
            backend.native_codec is not None
            and secret is None
            and not isinstance(data, frame.Split)
            and data[:4] != frame.MAGIC
        ):
            native = codecs.get_codec(backend.native_codec)
            return codecs.decode_payload(native, memoryview(data))
        codec, payload = frame.decode(data, secret, None if secret is None else (self._key, index))
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
        secret = self.signing()
        codec, payload = frame.decode(
            pinned, secret, None if secret is None else (self._key, index)
        )
        if codec.executes_code and secret is None and not backend.trusted(index):
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
