"""Storage backends: one module per scheme behind one small, blocking interface.

A backend lists the objects a :class:`~puller.source.Source` names (one object, or
every object under a prefix) with their size, version and checksum, and downloads one
object to a local path, reporting bytes as they arrive. Calls block; the fetcher runs
them in its thread pool and owns retries, so backends make one attempt per call and
raise the :mod:`mesh.errors` storage tree: ``StorageUnreachable`` (and
``CorruptModel(retryable=True)`` for a body cut short) for what may pass,
``StorageNotFound`` / ``StorageAccessDenied`` for what will not.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from puller.settings import PullerSettings
from puller.source import Source

#: Called from a worker thread with the number of new bytes written.
ProgressFn = Callable[[int], None]
C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class RemoteObject:
    #: The backend's address of the object (key, URL or absolute path).
    address: str
    #: Path relative to the model root, '/'-separated (the file name for one object).
    name: str
    #: Bytes, or None when the store does not say (an HTTP server without Content-Length).
    size: int | None
    #: Content version: ETag, generation or mtime.
    version: str
    #: ("md5" | "crc32c", lowercase hex) when the store publishes a checksum of the bytes.
    checksum: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Listing:
    objects: list[RemoteObject]
    #: True when the URI named one object (not a folder).
    single: bool


class Backend(Protocol):
    def list(self, source: Source) -> Listing:
        """The object the source names, else every object under it as a folder."""
        ...

    def download(self, source: Source, obj: RemoteObject, dest: Path, progress: ProgressFn) -> None:
        """Writes the object's bytes to ``dest`` (replacing it), one attempt."""
        ...

    def close(self) -> None:
        ...


def make_backends(settings: PullerSettings) -> dict[str, Backend]:
    """Scheme -> backend. Imports lazily so a missing optional client only hurts its scheme."""
    from puller.backends.gcs import GcsBackend
    from puller.backends.http import HttpBackend
    from puller.backends.local import LocalBackend
    from puller.backends.pvc import PvcBackend
    from puller.backends.s3 import S3Backend

    return {
        "s3": S3Backend(settings),
        "gs": GcsBackend(settings),
        "http": HttpBackend(settings),
        "file": LocalBackend(),
        "pvc": PvcBackend(settings.pvc_root),
    }


def relative_name(key: str, prefix: str) -> str:
    """The object's path under the folder prefix ('a/b/' + 'a/b/c/d' -> 'c/d')."""
    return key[len(prefix):] if key.startswith(prefix) else key


class ClientCache(Generic[C]):
    """One client per storage entry (keyed by its fingerprint), shared by worker threads."""

    def __init__(self, make: Callable[[Source], C], close: Callable[[C], None]) -> None:
        self._make = make
        self._close = close
        self._clients: dict[str, C] = {}
        self._lock = threading.Lock()

    def get(self, source: Source) -> C:
        fp = source.spec.fingerprint() if source.spec else ""
        with self._lock:
            if fp not in self._clients:
                self._clients[fp] = self._make(source)
            return self._clients[fp]

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            self._close(c)
