"""ModelMesh's ``storage-config``: named storage entries with their credentials.

The file (or a directory of files, one per key, as a mounted Kubernetes Secret gives)
maps a storage key to a JSON object, given inline or as a JSON string::

    {"localMinIO": {"type": "s3", "access_key_id": "...", "secret_access_key": "...",
                    "endpoint_url": "http://minio:9000", "region": "us-east-1",
                    "default_bucket": "models"},
     "default": "{\\"type\\": \\"gcs\\", \\"client_email\\": \\"...\\", \\"private_key\\": \\"...\\"}"}

A model's key JSON picks an entry with ``storage_key`` and may override its fields with
``storage_params`` (e.g. ``{"bucket": "other"}``); without ``storage_key`` the
``default`` entry is used when its type fits the URI.

Secrets stay out of logs, errors and reprs: :class:`StorageSpec` shows only fields
known to be harmless (type, endpoint, region, bucket...) and masks everything else.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.errors import StorageConfigInvalid

#: Entry types and the URI scheme each serves.
TYPE_TO_SCHEME = {"s3": "s3", "gcs": "gs", "http": "http", "pvc": "pvc", "azure": "azure"}

#: Fields whose values may be shown; every other field is treated as a secret.
PUBLIC_FIELDS = frozenset({
    "type", "endpoint_url", "region", "bucket", "default_bucket", "anonymous", "url",
    "name", "container", "account_name", "client_email", "token_uri",
})

#: Fields that say where the bytes come from (not who reads them): they go into the
#: cache's source digest, so rotating credentials does not invalidate cached models.
LOCATION_FIELDS = ("type", "endpoint_url", "url", "name", "account_name", "container")


@dataclass(frozen=True)
class StorageSpec:
    """One resolved storage entry: the config entry merged with ``storage_params``."""

    #: The storage key it came from (``None`` when built from ``storage_params`` alone).
    key: str | None
    type: str
    fields: Mapping[str, Any] = field(repr=False)

    def get(self, name: str, default: Any = None) -> Any:
        value = self.fields.get(name, default)
        return default if value in ("", None) else value

    def flag(self, name: str) -> bool:
        value = self.fields.get(name, False)
        return value is True or str(value).lower() in ("true", "1", "yes")

    def public(self) -> dict[str, Any]:
        """The fields with secret values masked, for logs and errors."""
        return {k: (v if k in PUBLIC_FIELDS else "***") for k, v in sorted(self.fields.items())}

    def describe(self) -> str:
        return f"storage key {self.key!r}" if self.key else "storage_params from the model key"

    def fingerprint(self) -> str:
        """A digest of every field (secrets included, never shown) to key client caches."""
        blob = json.dumps(dict(self.fields), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    def location(self) -> dict[str, Any]:
        return {k: self.fields[k] for k in LOCATION_FIELDS if k in self.fields}

    def __repr__(self) -> str:
        return f"StorageSpec(key={self.key!r}, type={self.type!r}, fields={self.public()!r})"


def _parse_entry(name: str, raw: Any, source: str) -> dict[str, Any]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            # Never echo the text: it holds the credentials.
            raise StorageConfigInvalid(
                f"storage config {source}: entry {name!r} is not valid JSON (line {e.lineno}, "
                f"column {e.colno}); each entry is a JSON object with at least \"type\""
            ) from None
    if not isinstance(raw, dict):
        raise StorageConfigInvalid(f"storage config {source}: entry {name!r} must be a JSON object")
    kind = raw.get("type")
    if kind not in TYPE_TO_SCHEME:
        raise StorageConfigInvalid(
            f"storage config {source}: entry {name!r} has type {kind!r}; "
            f"use one of {', '.join(sorted(TYPE_TO_SCHEME))}"
        )
    return raw


class StorageConfig:
    """Parsed storage entries by key."""

    def __init__(self, entries: Mapping[str, Mapping[str, Any]], source: str = "(inline)") -> None:
        self.source = source
        self._entries = {name: _parse_entry(name, raw, source) for name, raw in entries.items()}

    @classmethod
    def empty(cls) -> StorageConfig:
        return cls({}, "(none)")

    @classmethod
    def load(cls, path: Path) -> StorageConfig:
        """Reads a JSON file, or a directory with one file per key (hidden files skipped)."""
        source = str(path)
        try:
            if path.is_dir():
                raw: dict[str, Any] = {
                    p.name: p.read_text() for p in sorted(path.iterdir())
                    if not p.name.startswith(".") and p.is_file()
                }
            else:
                text = path.read_text()
                try:
                    raw = json.loads(text)
                except json.JSONDecodeError as e:
                    raise StorageConfigInvalid(
                        f"storage config {source} is not valid JSON (line {e.lineno}, column {e.colno})"
                    ) from None
                if not isinstance(raw, dict):
                    raise StorageConfigInvalid(
                        f"storage config {source} must be a JSON object mapping storage key -> entry"
                    )
        except FileNotFoundError:
            raise StorageConfigInvalid(
                f"storage config {source} does not exist: check --storage-config / MESHSERVE_STORAGE_CONFIG"
            ) from None
        except PermissionError:
            raise StorageConfigInvalid(f"storage config {source} is not readable by this process") from None
        return cls(raw, source)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def spec_for(self, key: Mapping[str, Any], scheme: str | None) -> StorageSpec | None:
        """The storage entry a model key selects for a URI of ``scheme`` (None: any).

        ``storage_key`` names an entry (it must exist and fit the scheme); without it the
        ``default`` entry is used if it fits; ``storage_params`` override either, or stand
        alone (with a ``type``) when there is no entry. None: no entry applies.
        """
        name = key.get("storage_key")
        params = key.get("storage_params") or {}
        if name is not None and (not isinstance(name, str) or not name):
            raise StorageConfigInvalid("the model key's storage_key must be a non-empty string")
        if not isinstance(params, dict):
            raise StorageConfigInvalid("the model key's storage_params must be a JSON object")
        if name:
            if name not in self._entries:
                known = ", ".join(repr(n) for n in self.names()) or "none"
                raise StorageConfigInvalid(
                    f"storage key {name!r} is not in the storage config {self.source} (keys: {known}); "
                    "add it to the storage-config Secret or fix the model's storage_key"
                )
            merged = {**self._entries[name], **params}
        elif "default" in self._entries and _fits(self._entries["default"].get("type"), scheme):
            name = "default"
            merged = {**self._entries["default"], **params}
        elif params.get("type") or (params and scheme):
            merged = {"type": _type_for(scheme), **params}
        else:
            return None
        kind = merged.get("type")
        if kind not in TYPE_TO_SCHEME:
            raise StorageConfigInvalid(f"storage type {kind!r} is not one of {', '.join(sorted(TYPE_TO_SCHEME))}")
        if not _fits(kind, scheme):
            raise StorageConfigInvalid(
                f"{'storage key ' + repr(name) if name else 'storage_params'} is type {kind!r}, "
                f"which cannot serve a {scheme}:// URI"
            )
        return StorageSpec(name, kind, merged)


def _type_for(scheme: str | None) -> str | None:
    for kind, s in TYPE_TO_SCHEME.items():
        if s == scheme or (scheme == "https" and s == "http"):
            return kind
    return None


def _fits(kind: Any, scheme: str | None) -> bool:
    if scheme is None:
        return True
    want = TYPE_TO_SCHEME.get(str(kind))
    return want == scheme or (want == "http" and scheme == "https")


class StorageConfigSource:
    """The storage config at a path, re-read when its files change (Secrets rotate)."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._signature: tuple[Any, ...] | None = None
        self._config = StorageConfig.empty()

    def _stat_signature(self) -> tuple[Any, ...]:
        assert self._path is not None
        try:
            if self._path.is_dir():
                return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size)
                             for p in sorted(self._path.iterdir()) if not p.name.startswith("."))
            st = self._path.stat()
            return (st.st_mtime_ns, st.st_size)
        except OSError:
            return ("missing",)

    def current(self) -> StorageConfig:
        """Blocking (stats files): call from an executor."""
        if self._path is None:
            return self._config
        sig = self._stat_signature()
        if sig != self._signature:
            self._config = StorageConfig.load(self._path)
            self._signature = sig
        return self._config
