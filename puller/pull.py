"""One model's pull: list, make room, download (in parallel, with retries), verify,
unpack, commit. The fetcher runs one of these per model at a time.

Every storage call is retried on transient errors with exponential backoff
(``retry_attempts``, ``retry_backoff_s`` doubling up to ``retry_backoff_max_s``);
the last error is raised with the attempt count. A failed pull leaves nothing in the
cache: its staging directory under ``tmp/`` is removed.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hashlib
import logging
import os
import posixpath
import random
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, TypeVar

from mesh.clock import Clock
from mesh.errors import CacheFull, CorruptModel, InvalidArgument, StorageError, StorageUnreachable, UnsafePath
from puller import archives
from puller.backends import Backend, Listing, RemoteObject
from puller.cache import DATA, CacheEntry, DiskCache
from puller.settings import PullerSettings
from puller.source import Source

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Called on the event loop with (bytes done, bytes expected or 0 when unknown).
ProgressCallback = Callable[[int, int], None]


class _Aborted(Exception):
    """Raised inside a download thread when the pull already failed elsewhere."""


class PullProgress:
    """Bytes written so far, updated from worker threads, read by the loop."""

    def __init__(self) -> None:
        self.total = 0
        self._done = 0
        self._lock = threading.Lock()
        self.abort = threading.Event()
        self.listeners: list[ProgressCallback] = []

    def add(self, n: int, *, check: bool = True) -> None:
        if check and self.abort.is_set():
            raise _Aborted()
        with self._lock:
            self._done += n

    @property
    def done(self) -> int:
        return self._done

    def report(self) -> None:
        for fn in list(self.listeners):
            try:
                fn(self._done, self.total)
            except Exception:  # a broken progress bar must not fail the pull
                log.exception("progress callback failed")


def file_digest(path: Path, algo: str) -> str:
    if algo == "crc32c":
        import google_crc32c

        crc = google_crc32c.Checksum()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                crc.update(chunk)
        return crc.digest().hex()
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def safe_relative(name: str, display: str) -> str:
    """An object's path under the model root; refuses names that would escape it."""
    clean = posixpath.normpath(name.replace("\\", "/")).lstrip("/")
    if not name or clean in (".", "") or clean == ".." or clean.startswith("../"):
        raise UnsafePath(f"{display}: object name {name!r} cannot be stored safely; rename it in storage")
    return clean


class Pull:
    """The pipeline for one model. Blocking steps run on ``executor``."""

    def __init__(self, settings: PullerSettings, cache: DiskCache, executor: Executor, clock: Clock) -> None:
        self._settings = settings
        self._cache = cache
        self._executor = executor
        self._clock = clock

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    async def _retry(self, what: str, fn: Callable[..., T], *args: Any, undo: Callable[[], None] | None = None) -> T:
        attempts = self._settings.retry_attempts
        delay = self._settings.retry_backoff_s
        start = self._clock.monotonic()
        for attempt in range(1, attempts + 1):
            try:
                return await self._call(fn, *args)
            except StorageError as e:
                if undo is not None:
                    undo()
                if not e.retryable or attempt == attempts:
                    if attempt > 1:
                        elapsed = self._clock.monotonic() - start
                        hint = "; check that the store is up and reachable from this host" \
                            if isinstance(e, StorageUnreachable) else ""
                        raise type(e)(f"{e.message} (gave up after {attempt} attempts in {elapsed:.1f}s){hint}",
                                      retryable=e.retryable) from None
                    raise
                log.warning("%s: attempt %d/%d failed: %s; retrying in %.2fs", what, attempt, attempts, e, delay)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self._settings.retry_backoff_max_s)
            except OSError as e:
                if undo is not None:
                    undo()
                raise _disk_error(e, self._cache.root, what) from None
        raise AssertionError("unreachable")

    async def run(self, model_id: str, source: Source, backend: Backend, progress: PullProgress) -> CacheEntry:
        what = f"model {model_id!r} ({source.display})"
        listing: Listing = await self._retry(what, backend.list, source)
        if source.sha256 and not listing.single:
            raise InvalidArgument(f"{what}: the key's sha256 applies to one file, but this is a folder")
        progress.total = sum(o.size or 0 for o in listing.objects)
        staging: Path | None = None
        try:
            await self._evict(self._cache.reserve(model_id, progress.total, what=what))
            staging = await self._call(self._cache.staging)
            data = staging / DATA
            kind = archives.archive_kind(listing.objects[0].name) if listing.single else None
            target = staging / "archive" if kind else data
            await self._download_all(source, backend, listing, target, progress)
            if listing.single and source.sha256:
                got = await self._call(file_digest, target / listing.objects[0].name, "sha256")
                if got != source.sha256:
                    raise CorruptModel(f"{what}: sha256 is {got}, the model key expects {source.sha256}")
            if kind:
                archive = target / listing.objects[0].name
                unpacked = await self._call(archives.unpacked_size, archive, kind, what)
                await self._evict(self._cache.reserve(model_id, progress.total + unpacked, what=what))
                await self._call(archives.unpack, archive, kind, data, what)
                await self._call(self._cache.discard, target)
            files = await self._call(_regular_files, data)
            size = sum(files.values())
            await self._evict(self._cache.reserve(model_id, size, what=what))
            now = self._clock.now_ms()
            single = safe_relative(listing.objects[0].name, source.display) if listing.single and not kind else None
            entry = CacheEntry(
                model_id=model_id, source_digest=source.digest(), version=_version(listing), uri=source.display,
                size_bytes=size, files=files, single_file=single, created_ms=now, last_used_ms=now,
            )
            await self._call(self._cache.commit, staging, entry)
        except BaseException:
            self._cache.unreserve(model_id)
            if staging is not None:
                await asyncio.shield(self._call(self._cache.discard, staging))
            raise
        self._cache.insert(entry)
        return entry

    async def _evict(self, victims: list[CacheEntry]) -> None:
        for v in victims:
            await self._call(self._cache.remove, v)

    async def _download_all(self, source: Source, backend: Backend, listing: Listing, target: Path,
                            progress: PullProgress) -> None:
        slots = asyncio.Semaphore(self._settings.object_parallelism)
        errors: list[BaseException] = []

        async def one(obj: RemoteObject) -> None:
            async with slots:
                if progress.abort.is_set():
                    return
                dest = target / safe_relative(obj.name, source.display)
                counted = [0]

                def on_bytes(n: int) -> None:
                    progress.add(n)
                    counted[0] += n

                def undo() -> None:
                    progress.add(-counted[0], check=False)
                    counted[0] = 0

                try:
                    await self._retry(f"{source.display}: {obj.name}", self._fetch_object, backend, source, obj,
                                      dest, on_bytes, undo=undo)
                except _Aborted:
                    return
                except BaseException as e:
                    progress.abort.set()  # the running downloads stop at their next chunk
                    errors.append(e)

        # Every task is awaited (no orphan threads writing into a deleted staging dir).
        try:
            await asyncio.gather(*(one(o) for o in listing.objects))
        except asyncio.CancelledError:
            progress.abort.set()  # closing: running downloads stop at their next chunk
            raise
        if errors:
            raise errors[0]

    def _fetch_object(self, backend: Backend, source: Source, obj: RemoteObject, dest: Path,
                      on_bytes: Callable[[int], None]) -> None:
        """One attempt at one object, verified. Blocking."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        backend.download(source, obj, dest, on_bytes)
        size = dest.stat().st_size
        if obj.size is not None and size != obj.size:
            raise CorruptModel(f"{source.display}: {obj.name}: got {size:,} of {obj.size:,} bytes (truncated)",
                               retryable=True)
        if self._settings.verify_checksums and obj.checksum:
            algo, want = obj.checksum
            got = file_digest(dest, algo)
            if got != want:
                raise CorruptModel(f"{source.display}: {obj.name}: {algo} is {got}, storage says {want}",
                                   retryable=True)


def _regular_files(root: Path) -> dict[str, int]:
    files: dict[str, int] = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            if p.is_file() and not p.is_symlink():
                files[p.relative_to(root).as_posix()] = p.stat().st_size
    return files


def _version(listing: Listing) -> str:
    if listing.single:
        return listing.objects[0].version
    h = hashlib.sha256()
    for o in sorted(listing.objects, key=lambda o: o.name):
        h.update(f"{o.name}\0{o.version}\0{o.size}\n".encode())
    return "folder:" + h.hexdigest()[:32]


def _disk_error(e: OSError, root: Path, what: str) -> StorageError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return CacheFull(f"{what}: the disk under {root} is full; free space or lower MESHSERVE_CACHE_BUDGET")
    return StorageError(f"{what}: cannot write to the cache under {root}: {e.strerror or e}")
