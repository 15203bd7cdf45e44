"""Loading and unloading models: single flight, bounded, timed, cancel-safe.

- One load per model id however many ``load`` calls wait on it (they share it).
- At most ``max_loading_concurrency`` loads run at once (fetch + deserialise).
- Each load's timeout grows with its predicted size (base + per GB).
- Framework work (session creation, ``torch.jit.load``, unload) runs in
  dedicated threads (:mod:`mesh.runtime.threads`); a thread cannot be interrupted,
  so a cancelled or timed out load waits for its thread and then drops what it
  made: when ``unload`` returns, nothing of that model is held. A load's eviction
  victims are dropped in the load's own thread, before it allocates
  (:mod:`mesh.runtime.unloader`).
- Fetches go through the injected :class:`~mesh.fetcher.Fetcher`; each loaded
  model's files are released when it is unloaded or evicted.

State changes are reported to a :class:`LoadListener` (the registration), which
must not block.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cachetools import LRUCache

from mesh.clock import Clock
from mesh.errors import (
    DeadlineExceeded,
    InvalidArgument,
    LoadAborted,
    MeshError,
    ModelLoadFailed,
    NotFound,
    Unavailable,
)
from mesh.fetcher import Fetcher, local_path, redact_uri
from mesh.security.paths import check_model_path
from mesh.registry.ids import validate_id
from mesh.runtime.backends import BackendRegistry
from mesh.runtime.cache import Entry, ModelCache
from mesh.runtime.inline import RunEstimate
from mesh.runtime.listener import LoadListener, parse_key
from mesh.runtime.metrics import RuntimeMetrics
from mesh.runtime.rate import RequestRate
from mesh.runtime.settings import RuntimeSettings
from mesh.runtime.sizing import LoadMeter, predict_size
from mesh.runtime.threads import FrameworkThreads
from mesh.runtime.unloader import Unloader

log = logging.getLogger(__name__)

#: Models whose run-time estimate outlives their eviction (a reload of the same source
#: starts from it: under churn, its first request no longer pays the pool's thread hop).
RUN_MEMO_SIZE = 8192


class ModelManager:
    def __init__(
        self,
        settings: RuntimeSettings,
        capacity: int,
        *,
        backends: BackendRegistry,
        fetcher: Fetcher,
        clock: Clock,
        metrics: RuntimeMetrics,
        listener: LoadListener,
    ) -> None:
        self._s = settings
        self.settings = settings
        self.cache = ModelCache(capacity, clock)
        self.backends = backends
        self._fetcher = fetcher
        self._clock = clock
        self._metrics = metrics
        self._listener = listener
        self._meter = LoadMeter(settings.device)
        self._loads: dict[str, asyncio.Task[int]] = {}
        self._slots = asyncio.Semaphore(settings.max_loading_concurrency)
        self._threads = FrameworkThreads(settings.max_loading_concurrency + 1)
        self._unloader = Unloader(self._threads, fetcher=fetcher, metrics=metrics, listener=listener, clock=clock,
                                  policy_name=lambda: self.cache.policy.name, on_done=self._update_gauges)
        self.infer_pool = ThreadPoolExecutor(settings.inference_threads, thread_name_prefix="infer")
        #: model id -> (its source: path and key, the run estimate of its copy here).
        self._runs: LRUCache[str, tuple[tuple[str, str], RunEstimate]] = LRUCache(RUN_MEMO_SIZE)
        self.accepting = True
        self.in_flight = 0
        self.rate = RequestRate(clock)
        self._idle = asyncio.Event()
        self._idle.set()
        metrics.capacity_bytes.set(capacity)
        metrics.loads_in_progress.set_function(lambda: len(self._loads))

    # -- queries -----------------------------------------------------------

    @property
    def loads_in_progress(self) -> int:
        return len(self._loads)

    @property
    def model_roots(self) -> tuple[str, ...]:
        """Where local model paths may lie: the configured roots and the model cache."""
        return (*self._s.model_roots, self._s.cache_dir)

    def size_of(self, model_id: str) -> int:
        entry = self.cache.get(model_id)
        return entry.size if entry is not None and entry.loaded else 0

    async def predict(self, model_id: str, model_type: str, path: str) -> int:
        """Conservative size without loading: local file bytes x factor + overhead, else the default."""
        validate_id(model_id)
        backend = self.backends.get(model_type)
        entry = self.cache.get(model_id)
        if entry is not None and entry.loaded:
            return entry.size
        try:
            check_model_path(model_id, path, self.model_roots)
            local = local_path(path)
        except InvalidArgument:
            local = None
        if local is None:
            return self._s.default_model_size
        from mesh.fetcher import disk_size

        try:
            size = await asyncio.get_running_loop().run_in_executor(self._threads.load_pool, disk_size, local)
        except OSError:
            return self._s.default_model_size
        return predict_size(size, self._s.size_prediction_factor, self._overhead(backend)) if size \
            else self._s.default_model_size

    def _overhead(self, backend: Any) -> int:
        """The fixed per-model cost in a prediction: the operator's MESHSERVE_SIZE_OVERHEAD
        when set, else the backend's own (``size_overhead``), else the default."""
        own = getattr(backend, "size_overhead", None)
        return self._s.size_overhead if own is None or "size_overhead" in self._s.model_fields_set else int(own)

    # -- loading -----------------------------------------------------------

    def check_request(self, model_id: str, model_type: str) -> None:
        """The checks that reject a load without attempting it."""
        validate_id(model_id)
        self.backends.get(model_type)
        if not self.accepting:
            raise Unavailable(f"runtime is shutting down: load model {model_id!r} elsewhere")

    async def load(self, model_id: str, model_type: str, path: str, key: str, *, mesh_full: bool = False) -> int:
        """Loads (or joins the load in progress); returns the charged size in bytes.

        ``mesh_full``: the router found no room anywhere (the churn guard applies)."""
        self.check_request(model_id, model_type)
        if not path.strip():
            raise InvalidArgument(f"model {model_id!r}: modelPath is empty")
        check_model_path(model_id, path, self.model_roots)
        entry = self.cache.get(model_id)
        if entry is not None and entry.loaded:
            return entry.size
        task = self._loads.get(model_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self._load(model_id, model_type, path, parse_key(model_id, key), mesh_full), name=f"load-{model_id}"
            )
            self._loads[model_id] = task
            task.add_done_callback(functools.partial(self._load_done, model_id))
        # The load is shared: a caller that goes away (gRPC cancel) does not stop it;
        # the SPI follows a cancelled loadModel with unloadModel, which does.
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if task.cancelled() and (me is None or not me.cancelling()):
                # The load, not this caller, was cancelled (unload, shutdown): every waiter
                # gets an answer now, not a cancelled RPC that leaves its client hanging.
                raise LoadAborted(f"model {model_id!r}: the load was cancelled by an unload (unloadModel, "
                                  "unregistration or shutdown) before it finished; nothing was kept. Load it "
                                  "again if it is still wanted") from None
            raise

    def _load_done(self, model_id: str, task: asyncio.Task[int]) -> None:
        if self._loads.get(model_id) is task:
            del self._loads[model_id]
        if not task.cancelled():
            task.exception()  # mark retrieved: callers saw it already

    async def _load(self, model_id: str, model_type: str, path: str, key: dict[str, Any], mesh_full: bool) -> int:
        backend = self.backends.get(model_type)
        unloading = self._unloader.pending(model_id)
        if unloading is not None:  # its files must be released before this load pins them again
            await asyncio.shield(unloading)
        self._listener.loading(model_id)
        result = "failure"
        queued = self._clock.monotonic()
        try:
            async with self._slots:
                self._metrics.load_queue_seconds.observe(self._clock.monotonic() - queued)
                started = self._clock.monotonic()
                fetched = await self._fetcher.fetch(model_id, path, key)
                try:
                    size = await self._load_fetched(model_id, model_type, backend, fetched.path, fetched.size_bytes,
                                                    key, started, mesh_full)
                except ModelLoadFailed as e:
                    await self._fetcher.release(model_id)
                    if str(fetched.path) != path:  # name the source, not just the cached copy
                        raise ModelLoadFailed(f"{e.message} (model files from {redact_uri(path)})") from None
                    raise
                except BaseException:
                    await self._fetcher.release(model_id)
                    raise
            result = "success"
            self._keep_run_estimate(model_id, path, key)
            self._listener.loaded(model_id, size)
            return size
        except asyncio.CancelledError:
            result = "cancelled"
            raise
        except MeshError as e:
            log.warning("load of model %r failed: %s", model_id, e)
            raise
        except Exception as e:
            log.exception("load of model %r failed unexpectedly", model_id)
            raise ModelLoadFailed(f"model {model_id!r}: load failed: {type(e).__name__}: {e}") from None
        finally:
            self._metrics.loads.labels(result).inc()
            if result != "success":
                self._listener.removed(model_id)
            self._update_gauges()

    def _keep_run_estimate(self, model_id: str, path: str, key: dict[str, Any]) -> None:
        """A reload of the same source inherits the estimate its last copy here built
        (fast stays inline from the first request, slow stays in the pool); another
        source starts afresh (its first run in the pool)."""
        entry = self.cache.get(model_id)
        if entry is None:
            return
        source = (path, repr(sorted(key.items())))
        known = self._runs.get(model_id)
        if known is not None and known[0] == source:
            entry.run = known[1]
        else:
            self._runs[model_id] = (source, entry.run)

    async def _load_fetched(
        self, model_id: str, model_type: str, backend: Any, path: Path, file_bytes: int, key: dict[str, Any],
        started: float, mesh_full: bool,
    ) -> int:
        """Reserves room (evicting), loads in a thread, commits the measured size.
        ``started``: when the load got its slot (the fetch is part of its cost)."""
        predicted = max(predict_size(file_bytes, self._s.size_prediction_factor, self._overhead(backend)), 1)
        victims = self.cache.reserve(model_id, model_type, predicted, mesh_full=mesh_full)
        self._update_gauges()
        timeout = self._s.load_timeout_base_s + self._s.load_timeout_per_gb_s * predicted / 1e9
        # Victims leave before the newcomer allocates (their memory is really free), in
        # the load's own thread: one hop for both.
        dropping = self._unloader.take(victims)

        def load() -> Any:
            self._unloader.drop(dropping)
            return self._meter.measure(lambda: backend.load(model_id, path, key, self._s.device))

        try:
            try:
                async with asyncio.timeout(timeout):
                    model, measured = await self._threads.run(load, cleanup=lambda r: r[0].unload())
            except TimeoutError:
                raise DeadlineExceeded(
                    f"model {model_id!r}: load took longer than {timeout:.1f}s (the timeout for a predicted "
                    f"{predicted} bytes); nothing was kept"
                ) from None
            finally:
                await self._unloader.finish(victims, "evicted", dropping)
            measured = max(measured, model.allocated_bytes)
            try:
                evicted = self.cache.commit(model_id, model, measured, self._clock.monotonic() - started)
            except MeshError:
                await self._threads.run(model.unload, pool=self._threads.unload_pool)
                raise
        except BaseException:
            self.cache.remove(model_id)
            raise
        await self._unload_entries(evicted, "evicted")
        entry = self.cache.get(model_id)
        assert entry is not None
        self._metrics.load_seconds.observe(entry.load_seconds)
        self._metrics.model_size_bytes.observe(entry.size)
        log.info("loaded model %r (%s) from %s: predicted %d, measured %d, charged %d bytes",
                 model_id, model_type, path, predicted, measured, entry.size)
        return entry.size

    # -- unloading ---------------------------------------------------------

    async def unload(self, model_id: str, reason: str = "requested") -> bool:
        """Cancels a load in progress or unloads; True if something was dropped."""
        validate_id(model_id)
        task = self._loads.get(model_id)
        dropped = False
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            dropped = True
        entry = self.cache.get(model_id)
        if entry is not None and entry.loaded:
            self.cache.remove(model_id)
            await self._unload_entries([entry], reason)
            dropped = True
        return dropped

    async def expire_idle(self) -> list[str]:
        """Unloads the models the eviction policy's idle expiry names (``ttl``)."""
        entries = [e for e in (self.cache.remove(m) for m in self.cache.expired()) if e is not None]
        await self._unload_entries(entries, "expired")
        return [e.model_id for e in entries]

    async def _unload_entries(self, entries: list[Entry], reason: str) -> None:
        """Unloads entries already removed from the cache (see :class:`Unloader`)."""
        await self._unloader.unload(entries, reason)

    async def unload_all(self, reason: str, timeout_s: float = 10.0) -> None:
        """Cancels every load (waiting at most ``timeout_s`` for their threads) and
        unloads every model."""
        loads = list(self._loads.values())
        for task in loads:
            task.cancel()
        if loads:
            await asyncio.wait(loads, timeout=timeout_s)
        entries = self.cache.loaded()
        for e in entries:
            self.cache.remove(e.model_id)
        await self._unload_entries(entries, reason)
        await self._unloader.wait_all()

    async def warm_up_in_background(self, fn: Any) -> None:
        """Runs ``fn`` (a backend's deferred import) in the load pool as if it were a
        load: loads overlapping it are not charged for the memory it takes."""
        try:
            await self._threads.run(lambda: self._meter.measure(fn))
        except Exception:  # noqa: BLE001 - a load that needs it reports the real error
            log.exception("background warm-up of the model backends failed")

    async def settle(self, timeout_s: float) -> None:
        """Waits (bounded) for the threads of cancelled loads to finish and drop their models."""
        await self._threads.settle(timeout_s)

    # -- inference bookkeeping ----------------------------------------------

    @contextmanager
    def use(self, model_id: str, instance_id: str) -> Iterator[Entry]:
        """Marks a request in flight on a loaded model (it cannot be evicted meanwhile)."""
        entry = self.cache.get(model_id)
        if entry is None or not entry.loaded:
            raise NotFound(f"model '{model_id}' is not loaded on runtime {instance_id}")
        entry.in_flight += 1
        self.in_flight += 1
        self.rate.add()
        self._idle.clear()
        self.cache.touch(entry)
        try:
            yield entry
        finally:
            entry.in_flight -= 1
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()
            self._listener.changed()

    async def wait_idle(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    def _update_gauges(self) -> None:
        self._metrics.models_loaded.set(len(self.cache.loaded()))
        self._metrics.used_bytes.set(self.cache.used)
        self._listener.changed()

    def close(self) -> None:
        self._threads.close()
        self.infer_pool.shutdown(wait=False, cancel_futures=True)
