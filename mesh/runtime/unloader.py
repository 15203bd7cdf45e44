"""Unloading models already removed from the cache (no new request can reach them).

Two ways, one bookkeeping:

- ``unload``: requests still running on an entry are waited for (bounded), its model
  is dropped in an unload thread, its files are released and the registration told.
  Runs to the end even if the caller is cancelled (a half-done unload would leave
  copy keys and file pins behind).
- ``take`` + ``finish``: a load's eviction victims (never with requests in flight)
  are dropped in the load's own thread, just before the newcomer allocates: one
  thread hop per miss instead of two, and the victims' copy-key deletes reach the
  registration in the same loop step as the newcomer's LOADED (one etcd
  transaction). ``finish`` drops whatever the load's thread did not get to.

A new load of a model still being unloaded waits for ``pending(model_id)``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from mesh.clock import Clock
from mesh.fetcher import Fetcher
from mesh.runtime.backends import LoadedModel
from mesh.runtime.cache import Entry
from mesh.runtime.listener import LoadListener
from mesh.runtime.metrics import RuntimeMetrics
from mesh.runtime.threads import FrameworkThreads

log = logging.getLogger(__name__)

#: How long an unload waits for requests still running on the model.
UNLOAD_DRAIN_S = 30.0


class Unloader:
    def __init__(self, threads: FrameworkThreads, *, fetcher: Fetcher, metrics: RuntimeMetrics,
                 listener: LoadListener, clock: Clock, policy_name: Callable[[], str],
                 on_done: Callable[[], None]) -> None:
        self._threads = threads
        self._fetcher = fetcher
        self._metrics = metrics
        self._listener = listener
        self._clock = clock
        self._policy_name = policy_name
        self._on_done = on_done
        self._unloading: dict[str, asyncio.Future[None]] = {}
        #: id(entry) -> the future its unload resolves (a later unload of the same id has its own).
        self._marks: dict[int, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def pending(self, model_id: str) -> asyncio.Future[None] | None:
        """Resolved once the model's unload is over (None: none under way)."""
        return self._unloading.get(model_id)

    # -- a load's victims, dropped in the load's thread ------------------------

    def take(self, entries: list[Entry]) -> list[tuple[str, LoadedModel]]:
        """Marks ``entries`` as unloading and takes their models out, for the caller
        to drop with :meth:`drop` in a thread it runs anyway; :meth:`finish` must follow."""
        models = []
        for entry in entries:
            self._mark(entry)
            if entry.model is not None:
                models.append((entry.model_id, entry.model))
                entry.model = None
        return models

    def drop(self, models: list[tuple[str, LoadedModel]]) -> None:
        """Drops the models (in a framework thread); each one dropped leaves the list."""
        while models:
            model_id, model = models.pop()
            started = self._clock.monotonic()
            try:
                model.unload()
                self._metrics.unload_seconds.observe(self._clock.monotonic() - started)
            except Exception:  # noqa: BLE001 - one failed unload must not stop the others (or the load)
                log.exception("unloading model %r failed", model_id)

    async def finish(self, entries: list[Entry], reason: str, leftover: list[tuple[str, LoadedModel]]) -> None:
        """The rest of ``take``: drops what is ``leftover`` (the load's thread never ran),
        releases the files, reports. With nothing left over this does not suspend (the
        fetchers release at once), so the removals and the newcomer's outcome are one write."""
        settled = 0
        try:
            if leftover:
                await self._threads.run(lambda: self.drop(leftover), pool=self._threads.unload_pool)
            for entry in entries:
                try:
                    await self._fetcher.release(entry.model_id)
                except Exception:  # noqa: BLE001
                    log.exception("releasing the files of model %r failed", entry.model_id)
                finally:
                    settled += 1
                    self._settled(entry, reason)
        finally:
            for entry in entries[settled:]:  # cancelled midway: report them anyway
                self._settled(entry, reason)
            self._on_done()

    # -- the general path --------------------------------------------------------

    async def unload(self, entries: list[Entry], reason: str) -> None:
        if not entries:
            return
        task = asyncio.get_running_loop().create_task(self._unload_now(entries, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.shield(task)

    async def wait_all(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _unload_now(self, entries: list[Entry], reason: str) -> None:
        loop = asyncio.get_running_loop()
        for entry in entries:
            self._mark(entry)
        for entry in entries:
            try:
                deadline = loop.time() + UNLOAD_DRAIN_S
                while entry.in_flight and loop.time() < deadline:
                    await asyncio.sleep(0.005)
                model: LoadedModel | None = entry.model
                entry.model = None
                try:
                    if model is not None:
                        await self._threads.run(functools.partial(self.drop, [(entry.model_id, model)]),
                                                pool=self._threads.unload_pool)
                    await self._fetcher.release(entry.model_id)
                except Exception:  # noqa: BLE001 - one failed unload must not stop the others
                    log.exception("unloading model %r failed", entry.model_id)
            finally:
                self._settled(entry, reason)
        self._on_done()

    # -- bookkeeping -------------------------------------------------------------

    def _mark(self, entry: Entry) -> None:
        self._unloading[entry.model_id] = self._marks[id(entry)] = asyncio.get_running_loop().create_future()

    def _settled(self, entry: Entry, reason: str) -> None:
        self._metrics.unloads.labels(reason).inc()
        if reason in ("evicted", "expired"):
            self._metrics.evicted(self._policy_name(), "capacity" if reason == "evicted" else "idle",
                                  self._clock.monotonic() - entry.last_used)
            log.info("%s model %r (%s policy; %d bytes, idle since %d ms epoch)", reason, entry.model_id,
                     self._policy_name(), entry.size, entry.last_used_ms)
        self._listener.removed(entry.model_id)
        done = self._marks.pop(id(entry), None)
        if done is not None:
            done.set_result(None)
            if self._unloading.get(entry.model_id) is done:
                del self._unloading[entry.model_id]
