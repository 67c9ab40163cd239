"""PHP's ``serialize()`` / ``unserialize()`` format, byte for byte as PHP 8.2 writes it.

This is what PHP's ``shm_put_var`` stores, so Python and PHP can share variables:

* ``None`` ``N;``, ``bool`` ``b:1;``, ``int`` (signed 64-bit) ``i:-42;``, ``float`` ``d:0.1;``
  ``d:1;`` ``d:1.0E+25;`` ``d:NAN;`` (PHP's own digits and layout);
* ``str`` as its UTF-8 bytes and ``bytes``-like as they are: ``s:<byte length>:"...";``;
* ``list`` / ``tuple`` and ``dict`` (int, str or bytes keys): ``a:<n>:{<key><value>...}``, a str
  key PHP would store as an int (``"7"``, not ``"07"``) written as one, as PHP does;
* :class:`PHPObject` ``O:``, :class:`PHPEnum` ``E:``, :class:`PHPSerializable` ``C:``; an object met
  again is written as PHP's back-reference ``r:<slot>;``.

Decoding gives ``str`` for valid UTF-8 and ``bytes`` otherwise, and a ``list`` for an array keyed
exactly 0..n-1 in order, else a ``dict``. PHP's back-references (``r:n;`` the same object again,
``R:n;`` a PHP reference) decode to the very Python object of the slot they name; a PHP reference
is written back as a copy. Where ``unserialize()`` is laxer, :func:`loads` refuses: an int out of
64-bit range (PHP clamps it with a warning), a class or property name that is not UTF-8, the
``S:`` escaped-string format no PHP writes, and an object count with no digits.

The writer is in ``write``, the reader in ``read``, and what both share (the object types, PHP's
limits on numbers and names) in ``values``.
"""

from __future__ import annotations

from shmfs.phpserial.read import loads
from shmfs.phpserial.values import PHPEnum, PHPObject, PHPSerializable
from shmfs.phpserial.write import dumps

__all__ = ["PHPEnum", "PHPObject", "PHPSerializable", "dumps", "loads"]

# Pickles name these classes by their public path, as they did when this package was one module.
for _kind in (PHPEnum, PHPObject, PHPSerializable):
    _kind.__module__ = __name__
