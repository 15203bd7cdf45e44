"""Where a model's bytes live: a storage URI and the model key resolved to a Source.

URIs: ``s3://bucket/key``, ``gs://bucket/key``, ``http(s)://host/path``,
``file:///abs/path`` or a plain path, ``pvc://NAME/path``. A path without a scheme
is a location in storage when the model key names a ``storage_key`` (or
``storage_params`` with a ``type``), or when it is relative and the storage config
has a ``default`` entry; otherwise it is a local path. This matches ModelMesh, where a
model's path is relative to the bucket of its storage key.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

from mesh.fetcher import redact_uri
from mesh.errors import InvalidArgument, StorageConfigInvalid, UnsafePath
from mesh.fetcher import local_path
from puller.storage_config import TYPE_TO_SCHEME, StorageConfig, StorageSpec

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


@dataclass(frozen=True)
class Source:
    #: Backend name: s3, gs, http, file or pvc.
    scheme: str
    #: Bucket (s3, gs), volume name (pvc), "" otherwise.
    bucket: str
    #: Object key or prefix (s3, gs), full URL (http), absolute path (file), path in the volume (pvc).
    #: Kept out of the repr: an http URL may carry user:password or a signed query.
    path: str = field(repr=False)
    #: Storage entry with the credentials, or None (anonymous / ambient credentials).
    spec: StorageSpec | None = None
    #: The URI as shown to users: no user:password, no query string.
    display: str = ""
    #: sha256 the model key demands of the (single) downloaded object, lowercase hex.
    sha256: str | None = None

    def describe_credentials(self) -> str:
        return self.spec.describe() if self.spec else "no storage key (anonymous or ambient credentials)"

    def digest(self) -> str:
        """Identifies the content's location (not the credentials): the cache keys on it."""
        blob = json.dumps([self.scheme, self.bucket, self.path, self.sha256,
                           self.spec.location() if self.spec else {}], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def is_archive(self) -> bool:
        return is_archive_name(self.path)


def is_archive_name(name: str) -> bool:
    lower = name.lower().split("?", 1)[0]
    return lower.endswith(ARCHIVE_SUFFIXES)


def _clean_key(path: str, display: str) -> str:
    """An object key without a leading '/', refusing '..' segments."""
    key = path.lstrip("/")
    if any(seg == ".." for seg in key.split("/")):
        raise UnsafePath(f"{display}: '..' is not allowed in a storage path")
    return key


def resolve_source(uri: str, key: Mapping[str, Any], config: StorageConfig) -> Source:
    """Resolves a model's URI and key JSON; raises InvalidArgument / StorageConfigInvalid."""
    if not isinstance(key, Mapping):
        raise InvalidArgument("the model key must be a JSON object (or empty)")
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidArgument("the model's storage URI is empty: give s3://, gs://, http(s)://, pvc:// or a path")
    sha = key.get("sha256")
    if sha is not None and (not isinstance(sha, str) or not _SHA256.match(sha)):
        raise InvalidArgument("the model key's sha256 must be 64 hexadecimal characters")
    sha = sha.lower() if sha else None
    display = redact_uri(uri)
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "s3" or scheme in ("gs", "gcs"):
        scheme = "s3" if scheme == "s3" else "gs"
        if not parts.netloc:
            raise InvalidArgument(f"{display}: no bucket; use {scheme}://BUCKET/path")
        spec = config.spec_for(key, scheme)
        return Source(scheme, parts.netloc, _clean_key(unquote(parts.path), display), spec, display, sha)
    if scheme in ("http", "https"):
        if not parts.netloc:
            raise InvalidArgument(f"{display}: no host")
        spec = config.spec_for(key, scheme)
        return Source("http", "", uri, spec, display, sha)
    if scheme == "pvc":
        if not parts.netloc:
            raise InvalidArgument(f"{display}: no volume name; use pvc://NAME/path")
        return Source("pvc", parts.netloc, _clean_key(unquote(parts.path), display), None, display, sha)
    if scheme == "file" or (not scheme and not _names_storage(uri, key, config)):
        path = local_path(uri)
        assert path is not None
        return Source("file", "", str(path.absolute()), None, display, sha)
    if scheme:
        raise InvalidArgument(
            f"{display}: unsupported scheme {scheme!r}; use s3://, gs://, http(s)://, file://, pvc:// or a path"
        )
    return _in_storage(uri, key, config, sha)


def _names_storage(uri: str, key: Mapping[str, Any], config: StorageConfig) -> bool:
    params = key.get("storage_params") or {}
    if key.get("storage_key") or (isinstance(params, dict) and params.get("type")):
        return True
    return not PurePosixPath(uri).is_absolute() and "default" in config.names()


def _in_storage(path: str, key: Mapping[str, Any], config: StorageConfig, sha: str | None) -> Source:
    """A schemeless path inside the storage entry the key selects (ModelMesh style)."""
    spec = config.spec_for(key, None)
    assert spec is not None
    scheme = TYPE_TO_SCHEME[spec.type]
    where = spec.describe()
    if scheme in ("s3", "gs"):
        bucket = spec.get("bucket") or spec.get("default_bucket")
        if not bucket:
            raise StorageConfigInvalid(
                f"{where} names no bucket for path {path!r}: set \"bucket\" in storage_params or "
                "\"default_bucket\" in the storage config, or use a full URI"
            )
        key_path = _clean_key(path, path)
        return Source(scheme, bucket, key_path, spec, f"{scheme}://{bucket}/{key_path}", sha)
    if scheme == "http":
        base = spec.get("url")
        if not base:
            raise StorageConfigInvalid(f"{where} has no \"url\" to fetch {path!r} from")
        url = urljoin(base.rstrip("/") + "/", quote(_clean_key(path, path)))
        return Source("http", "", url, spec, redact_uri(url), sha)
    if scheme == "pvc":
        name = spec.get("name")
        if not name:
            raise StorageConfigInvalid(f"{where} has no \"name\" (the PVC) for path {path!r}")
        key_path = _clean_key(path, path)
        return Source("pvc", name, key_path, spec, f"pvc://{name}/{key_path}", sha)
    raise StorageConfigInvalid(f"{where} is type {spec.type!r}, which this puller does not support yet")
