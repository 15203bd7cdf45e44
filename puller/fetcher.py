"""``PullerFetcher``: the puller behind :class:`mesh.fetcher.Fetcher`.

Usage (the runtime's entry point builds it once)::

    fetcher = PullerFetcher(PullerSettings(), clock=None)   # clock: mesh.clock.Clock
    await fetcher.start()            # locks + validates the disk cache (fetch starts it too)
    model = await fetcher.fetch("my-model", "s3://bucket/models/m1/", {"storage_key": "minio"})
    ...                              # model.path: the single file, else the directory
    await fetcher.release("my-model")   # the runtime unloaded it: it may now be evicted
    await fetcher.close()            # stops pulls in flight, frees the cache lock

``fetch`` serves a model already in the disk cache without contacting storage; else
it pulls it (concurrent fetches of one model share one pull; at most
``max_concurrent_pulls`` pulls run at once) and pins it until ``release``. Each
successful ``fetch`` pins once and each ``release`` undoes one pin. ``pvc://`` paths
are handed over in place (an archive on a volume is unpacked into the cache).
Errors are the :mod:`mesh.errors` storage tree, with messages that name the URI
(never credentials) and what to check.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from cachetools import TTLCache

from mesh.clock import Clock, SystemClock
from mesh.errors import FailedPrecondition, MeshError, StorageConfigInvalid
from mesh.fetcher import FetchedModel, PullObserver, disk_size
from mesh.registry.ids import validate_id
from puller.backends import Backend, make_backends
from puller.backends.pvc import PvcBackend
from puller.cache import CacheEntry, DiskCache
from puller.pull import ProgressCallback, Pull, PullProgress
from puller.settings import PullerSettings
from puller.source import Source, resolve_source
from puller.storage_config import StorageConfig, StorageConfigSource

log = logging.getLogger(__name__)
T = TypeVar("T")
_PROGRESS_EVERY_S = 0.25
#: Seconds a storage-config check stays good (a rotated Secret is seen within this).
CONFIG_CHECK_S = 1.0


class PullerFetcher:
    """Models from object storage into a local disk cache (see the module docstring)."""

    def __init__(self, settings: PullerSettings, *, clock: Clock | None = None,
                 observer: PullObserver | None = None) -> None:
        self.settings = settings
        #: Metrics hook (mesh.fetcher.PullObserver): pulls, bytes, durations, cache hits.
        self._observer = observer
        self._clock = clock or SystemClock()
        self.cache = DiskCache(settings.cache_dir, settings.cache_budget, self._clock)
        self._storage = StorageConfigSource(settings.storage_config)
        self._backends: dict[str, Backend] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._slots = asyncio.Semaphore(settings.max_concurrent_pulls)
        self._inflight: dict[str, tuple[asyncio.Task[CacheEntry], str, PullProgress]] = {}
        self._start_task: asyncio.Task[None] | None = None
        self._started = False
        self._config_memo: TTLCache[str, StorageConfig] = TTLCache(1, CONFIG_CHECK_S, timer=self._clock.monotonic)
        self._lru_task: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Locks and validates the cache; idempotent. Returns when fetches can run.

        Safe to cancel: the start itself runs on (shielded) for the next caller. A
        cancelled start that was abandoned would otherwise leave its thread taking the
        directory lock, and the next start would find the directory "in use"."""
        if self._started:
            return
        task = self._start_task
        if task is None or (task.done() and not self._started):
            task = self._start_task = asyncio.get_running_loop().create_task(self._start(), name="puller-start")
        await asyncio.shield(task)

    async def _start(self) -> None:
        if self._closed:
            raise FailedPrecondition("this PullerFetcher is closed")
        s = self.settings
        self._executor = ThreadPoolExecutor(
            max_workers=s.max_concurrent_pulls * s.object_parallelism + 4, thread_name_prefix="puller")
        try:
            stats = await self._call(self.cache.open)
        except BaseException:
            executor, self._executor = self._executor, None
            executor.shutdown(wait=False)
            raise
        self._backends = make_backends(s)
        try:
            await self._call(self._storage.current)
        except StorageConfigInvalid as e:  # fetches will report it; local models still load
            log.error("puller: %s", e)
        self._started = True
        self._lru_task = asyncio.get_running_loop().create_task(
            self._save_lru_every(s.lru_save_interval_s), name="puller-lru-save")
        log.info("puller: cache %s ready (%s), budget %d bytes, %d bytes used",
                 s.cache_dir, ", ".join(f"{k} {v}" for k, v in sorted(stats.items())) or "empty",
                 s.cache_budget, self.cache.used_bytes())

    async def close(self) -> None:
        """Cancels pulls in flight (their partial files are removed), then frees everything."""
        self._closed = True
        tasks = [t for t, _, _ in self._inflight.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._start_task is not None:  # a start under way finishes first (it may hold the lock)
            await asyncio.gather(self._start_task, return_exceptions=True)
        if not self._started:
            return
        self._started = False
        if self._lru_task is not None:
            self._lru_task.cancel()
            await asyncio.gather(self._lru_task, return_exceptions=True)
            self._lru_task = None
        try:
            await self.save_lru()  # a clean shutdown keeps the LRU order exactly
        except OSError as e:
            log.warning("puller: could not save the cache's LRU order at shutdown: %s", e)
        backends, self._backends = list(self._backends.values()), {}
        executor, self._executor = self._executor, None
        for b in backends:
            await asyncio.to_thread(b.close)
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, True, cancel_futures=True)
        self.cache.close()

    async def __aenter__(self) -> PullerFetcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, fn: Any, *args: Any) -> Any:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    # -- the Fetcher interface ---------------------------------------------------

    async def fetch(self, model_id: str, uri: str, key: Mapping[str, Any] | None = None, *,
                    progress: ProgressCallback | None = None) -> FetchedModel:
        """The model's local files, pinned until :meth:`release`.

        ``progress(done, total)`` is called on the event loop while bytes arrive
        (``total`` 0 when storage does not say). Raises the storage error tree.
        """
        await self.start()
        validate_id(model_id)
        key = key or {}
        try:
            config = await self._storage_config()
            config_error = None
        except StorageConfigInvalid as e:
            config, config_error = StorageConfig.empty(), e
        source = resolve_source(uri, key, config)
        if config_error is not None and (source.scheme not in ("file", "pvc") or _names_storage(key)):
            raise config_error  # local models still load while the storage config is broken
        if source.scheme == "pvc" and not source.is_archive:
            return await self._in_place(source)
        digest = source.digest()
        entry = self.cache.lookup(model_id)
        if entry is not None and entry.source_digest != digest:
            await self._drop_stale(model_id, entry, source)
            entry = None
        # A stat of the local cache, on the loop: far cheaper than the executor hop it would take.
        if entry is not None and not self.cache.entry_path(entry).exists():
            log.warning("puller: cached files of %s vanished from %s; pulling again", model_id, self.cache.root)
            self.cache.forget(entry)
            entry = None
        if entry is not None:
            self.cache.pin(model_id)
            self.cache.touch(entry)  # in memory; saved in the background (_save_lru_every)
            if self._observer is not None:
                self._observer.cache_hit()
            return FetchedModel(self.cache.entry_path(entry), entry.size_bytes, True)
        # Pinned while waiting too: a pull for another model cannot evict it between the
        # moment it lands and the moment we hand it over.
        self.cache.pin(model_id)
        try:
            entry = await self._join_or_start(model_id, source, progress)
        except BaseException:
            self.cache.unpin(model_id)
            raise
        return FetchedModel(self.cache.entry_path(entry), entry.size_bytes, False)

    async def release(self, model_id: str) -> None:
        self.cache.unpin(model_id)

    async def save_lru(self) -> None:
        """Writes the disk cache's LRU order now if it changed (also done every
        ``lru_save_interval_s`` and at close)."""
        snapshot = self.cache.lru_snapshot()
        if snapshot is not None and self._executor is not None:
            await self._call(self.cache.write_lru, snapshot)

    async def _save_lru_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.save_lru()
            except OSError as e:  # a full or read-only disk: the order is kept in memory meanwhile
                log.warning("puller: could not save the cache's LRU order: %s", e)

    async def _storage_config(self) -> StorageConfig:
        """The storage config, re-checked (a stat, in the executor) at most once per
        CONFIG_CHECK_S: a burst of cache hits does not stat the Secret each time."""
        config = self._config_memo.get("config")
        if config is None:
            config = await self._call(self._storage.current)
            self._config_memo["config"] = config
        return config

    # -- internals -----------------------------------------------------------------

    async def _join_or_start(self, model_id: str, source: Source, progress: ProgressCallback | None) -> CacheEntry:
        digest = source.digest()
        running = self._inflight.get(model_id)
        if running is not None and running[1] != digest:
            raise FailedPrecondition(
                f"model {model_id!r} is being pulled from another URI; a model id names one content "
                "(register new content under a new id)"
            )
        if running is None:
            pull_progress = PullProgress()
            task = asyncio.create_task(self._pull(model_id, source, pull_progress), name=f"pull {model_id}")
            running = (task, digest, pull_progress)
            self._inflight[model_id] = running
            task.add_done_callback(functools.partial(self._pull_done, model_id))
        task, _, pull_progress = running
        if progress is not None:
            pull_progress.listeners.append(progress)
        try:
            # Shielded: one waiter giving up does not cancel the pull others wait on.
            return await asyncio.shield(task)
        finally:
            if progress is not None and progress in pull_progress.listeners:
                pull_progress.listeners.remove(progress)

    def _pull_done(self, model_id: str, task: asyncio.Task[CacheEntry]) -> None:
        if self._inflight.get(model_id, (None,))[0] is task:
            del self._inflight[model_id]
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have gone

    async def _pull(self, model_id: str, source: Source, progress: PullProgress) -> CacheEntry:
        async with self._slots:
            assert self._executor is not None
            start = self._clock.monotonic()
            reporter = asyncio.create_task(_report(progress))
            try:
                entry = await Pull(self.settings, self.cache, self._executor, self._clock).run(
                    model_id, source, self._backends[source.scheme], progress)
            except BaseException as e:
                if self._observer is not None:
                    code = e.code if isinstance(e, MeshError) else (
                        "CANCELLED" if isinstance(e, asyncio.CancelledError) else "INTERNAL")
                    self._observer.pull_failed(source.scheme, code, self._clock.monotonic() - start)
                raise
            finally:
                reporter.cancel()
                await asyncio.gather(reporter, return_exceptions=True)
            progress.report()
            elapsed = self._clock.monotonic() - start
            if self._observer is not None:
                self._observer.pulled(source.scheme, entry.size_bytes, elapsed)
            log.info("puller: %s pulled from %s: %d files, %d bytes in %.2fs", model_id, source.display,
                     len(entry.files), entry.size_bytes, elapsed)
            return entry

    async def _drop_stale(self, model_id: str, entry: CacheEntry, source: Source) -> None:
        if self.cache.pins(model_id):
            raise FailedPrecondition(
                f"model {model_id!r} is loaded from {entry.uri} and cannot be re-pulled from {source.display} "
                "while a runtime holds it; register new content under a new model id"
            )
        log.warning("puller: model %s now points at %s (was %s): dropping the cached copy",
                    model_id, source.display, entry.uri)
        self.cache.forget(entry)
        await self._call(self.cache.remove, entry)

    async def _in_place(self, source: Source) -> FetchedModel:
        pvc = self._backends["pvc"]
        assert isinstance(pvc, PvcBackend)
        path = await self._call(pvc.resolve, source)
        size = await self._call(disk_size, path)
        return FetchedModel(path, size, True)


def _names_storage(key: Mapping[str, Any]) -> bool:
    return isinstance(key, Mapping) and bool(key.get("storage_key") or key.get("storage_params"))


async def _report(progress: PullProgress) -> None:
    while True:
        await asyncio.sleep(_PROGRESS_EVERY_S)
        progress.report()
