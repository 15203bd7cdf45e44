"""How a runtime gets a model's files: the small interface the puller implements.

The mesh core defines it so the runtime never imports the puller; the entry point
(``meshserve runtime``) hands in ``puller``'s implementation. ``LocalFetcher``
serves plain paths and ``file://`` URIs, for tests and for runtimes without a
puller.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse, urlsplit, urlunsplit

from mesh.errors import InvalidArgument, StorageNotFound


@dataclass(frozen=True, slots=True)
class FetchedModel:
    #: Local file or directory holding the model.
    path: Path
    #: Bytes on disk.
    size_bytes: int
    #: True when no storage was contacted (already in the disk cache, or local).
    from_cache: bool = True


class Fetcher(Protocol):
    async def fetch(self, model_id: str, uri: str, key: dict[str, Any]) -> FetchedModel:
        """Makes the model's files local and pins them until :meth:`release`.

        ``key`` is the model's parsed key JSON (``storage_key``, ``storage_params``,
        ``sha256``...), ``{}`` if none. Raises a :class:`~mesh.errors.StorageError`.
        """
        ...

    async def release(self, model_id: str) -> None:
        """The runtime no longer holds the model: its files may be evicted."""
        ...


class PullObserver(Protocol):
    """Optional metrics hook a fetcher reports to (the runtime's metrics implement it)."""

    def pulled(self, scheme: str, size_bytes: int, seconds: float) -> None:
        """A pull from storage finished: bytes written and how long it took."""
        ...

    def pull_failed(self, scheme: str, code: str, seconds: float) -> None:
        """A pull failed; ``code`` is the error's gRPC status name."""
        ...

    def cache_hit(self) -> None:
        """A fetch was served from the local disk cache without contacting storage."""
        ...


def redact_uri(uri: str) -> str:
    """A URI fit for messages: drops user:password and the query (presigned URLs sign there)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable URI>"
    if not parts.scheme:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    query = "…" if parts.query else ""
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


def local_path(uri: str) -> Path | None:
    """The path of a ``file://`` URI or plain path; None for other schemes."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise InvalidArgument(f"file URI {uri!r} names host {parsed.netloc!r}: use file:///absolute/path")
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and uri[1:3] == ":\\"):
        return Path(uri)
    return None


def disk_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class LocalFetcher:
    """Plain paths and file:// URIs, used in place."""

    async def fetch(self, model_id: str, uri: str, key: dict[str, Any]) -> FetchedModel:
        path = local_path(uri)
        if path is None:
            raise InvalidArgument(
                f"model {model_id!r}: storage URI {uri!r} needs the puller (s3://, gs://, http(s)://, pvc://); "
                "this runtime only reads local paths"
            )
        if not path.exists():
            raise StorageNotFound(f"model {model_id!r}: {path} does not exist")
        size = await asyncio.get_running_loop().run_in_executor(None, disk_size, path)
        return FetchedModel(path, size, True)

    async def release(self, model_id: str) -> None:
        return None
