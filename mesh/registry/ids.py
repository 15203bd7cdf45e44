"""Validation of user-chosen ids before they become etcd keys or file paths."""

from __future__ import annotations

import re

from mesh.errors import InvalidModelId

MAX_ID_LENGTH = 256
_ALLOWED = re.compile(r"^[A-Za-z0-9._:@+=/-]+$")


def validate_id(value: str, *, what: str = "model id") -> str:
    """Returns ``value`` if it is a safe id, else raises :class:`InvalidModelId`.

    Safe: 1-256 characters from letters, digits and ``. _ : @ + = / -``; no ``..``;
    no ``/`` at either end and no ``//`` (so an id maps to a clean key and path).
    """
    if not isinstance(value, str) or not value:
        raise InvalidModelId(f"{what} is empty: give a non-empty id")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidModelId(
            f"{what} is {len(value)} characters long: the limit is {MAX_ID_LENGTH}"
        )
    if not _ALLOWED.match(value):
        bad = sorted({c for c in value if not _ALLOWED.match(c)})
        shown = ", ".join(repr(c) for c in bad[:5])
        raise InvalidModelId(
            f"{what} {value[:64]!r} contains {shown}: use letters, digits and . _ : @ + = / -"
        )
    if ".." in value:
        raise InvalidModelId(f"{what} {value[:64]!r} contains '..', which is not allowed")
    if value.startswith("/") or value.endswith("/") or "//" in value:
        raise InvalidModelId(
            f"{what} {value[:64]!r} starts or ends with '/' or contains '//'"
        )
    return value
