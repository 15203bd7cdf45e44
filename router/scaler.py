"""Copies: more for busy models, fewer for idle ones, min/max per model honoured.

Every ``scale_interval_s`` the router looks at the requests it forwarded since
the last look. A model whose requests/min per loaded copy exceed
``scale_up_rpm`` gets one more copy (up to its ``max_copies``); a model with
more copies than it needs (max(1, min_copies)) that has seen no request for
``idle_copy_s`` gives one back. It also unloads copies of models that are no
longer registered (the janitor). Rates are this router's own traffic: with
several routers behind a balancer each sees its share.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from mesh.clock import Clock
from mesh.errors import MeshError
from router.forward import Forwarder
from router.loader import Loader
from router.management import Management
from router.runtimes import RuntimeClients
from router.settings import RouterSettings
from router.table import RoutingTable

log = logging.getLogger(__name__)


class Scaler:
    def __init__(self, settings: RouterSettings, table: RoutingTable, loader: Loader, forwarder: Forwarder,
                 mgmt: Management, runtimes: RuntimeClients, clock: Clock) -> None:
        self._s = settings
        self._runtimes = runtimes
        self._table = table
        self._loader = loader
        self._fwd = forwarder
        self._mgmt = mgmt
        self._clock = clock
        self._last = clock.monotonic()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._s.scale_interval_s)
            try:
                await self.tick()
            except MeshError as e:
                log.warning("copy scaling round failed: %s", e)

    async def tick(self) -> None:
        now = self._clock.monotonic()
        minutes = max(1e-6, (now - self._last) / 60)
        self._last = now
        counts, self._fwd.request_counts = self._fwd.request_counts, {}
        mirror = self._table.mirror
        for model_id, n in counts.items():
            model = mirror.models.get(model_id)
            copies = self._table.loaded_on(model_id)
            if model is None or not copies:
                continue
            limit = model.max_copies or len(mirror.instances)
            if n / minutes / len(copies) > self._s.scale_up_rpm and len(copies) < limit:
                log.info("model %s: %.0f req/min on %d copies; adding one", model_id, n / minutes, len(copies))
                await self._try_add(model_id)
        for model_id, model in list(mirror.models.items()):
            loaded = self._table.loaded_on(model_id)
            want = max(1, model.min_copies)
            if model.min_copies and len(loaded) < model.min_copies:
                for _ in range(model.min_copies - len(loaded)):
                    await self._try_add(model_id)
            elif len(loaded) > want and now - self._fwd.last_used.get(model_id, 0.0) > self._s.idle_copy_s:
                await self._release_one(model_id, loaded)
        for model_id in [m for m in mirror.copies if m not in mirror.models]:
            log.info("janitor: unloading copies of unregistered model %s", model_id)
            await self._mgmt.unload_everywhere(model_id)

    async def _try_add(self, model_id: str) -> None:
        try:
            await self._loader.add_copy(model_id, self._clock.monotonic() + self._s.load_timeout_s)
        except MeshError as e:
            log.info("could not add a copy of %s: %s", model_id, e)

    async def _release_one(self, model_id: str, loaded: list[str]) -> None:
        # Give back the copy on the fullest instance.
        insts = self._table.mirror.instances
        victim = max(loaded, key=lambda i: (insts[i].used_bytes / max(1, insts[i].capacity_bytes), i))
        endpoint = self._table.endpoint(victim)
        log.info("model %s idle: releasing its extra copy on %s", model_id, victim)
        try:
            if endpoint:
                await self._runtimes.unload_model(endpoint, model_id)
        except grpc.aio.AioRpcError as e:
            log.warning("release of %s on %s failed: %s", model_id, victim, e.details())
