"""The runtime's side of the policy document: its eviction policy, kept live.

The runtime's eviction policy is the document's first ``eviction.by_label`` rule
matching its labels, else ``eviction.default``, else its own
``eviction_policy`` setting (``MESHSERVE_EVICTION_POLICY``, lru). The document
comes from the registry key ``config/policy`` (watched: a change applies within
the watch's latency, no restart), else ``--policy-file``. Two owned tasks: the
watch, and the idle sweep that unloads models the policy's idle expiry names
(``ttl``; it sleeps while the policy has none).
"""

from __future__ import annotations

import asyncio
import logging

from mesh.errors import InvalidArgument, MeshError
from mesh.policy.document import PolicyDocument, eviction_policy
from mesh.policy.live import LivePolicy
from mesh.registry.keys import KeySchema
from mesh.registry.store import KVStore
from mesh.runtime.loader import ModelManager
from mesh.runtime.metrics import RuntimeMetrics
from mesh.runtime.settings import RuntimeSettings
from mesh.tasks import TaskSet

log = logging.getLogger(__name__)


class RuntimePolicy:
    def __init__(self, settings: RuntimeSettings, metrics: RuntimeMetrics) -> None:
        """Reads ``--policy-file`` (InvalidArgument if it is bad)."""
        self._s = settings
        self._metrics = metrics
        self.live = LivePolicy(settings.policy_file, on_error=metrics.policy_errors.inc)
        metrics.policy_revision.set_function(lambda: self.live.revision)
        self._manager: ModelManager | None = None
        self._wake = asyncio.Event()
        self._tasks = TaskSet("runtime-policy")

    def _apply(self, doc: PolicyDocument) -> None:
        spec = doc.eviction_for(self._s.labels, self._s.eviction_policy)
        try:
            policy = eviction_policy(spec)
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        if self._manager is not None:
            if policy != self._manager.cache.policy:
                log.info("eviction policy: %s %s", policy.name, policy.params)
            self._manager.cache.set_policy(policy)
        self._wake.set()

    async def start(self, manager: ModelManager, store: KVStore, keys: KeySchema) -> None:
        """Applies the current document, then follows the key and sweeps."""
        self._manager = manager
        self.live.subscribe(self._apply)
        revision = await self.live.load(store, keys.policy)
        self._tasks.spawn(self.live.follow(store, keys.policy, revision), "watch")
        self._tasks.spawn(self._sweep(manager), "idle-sweep")

    async def _sweep(self, manager: ModelManager) -> None:
        while True:
            interval = manager.cache.policy.sweep_interval_s
            try:
                # asyncio.timeout, not wait_for: a cancelled 3.11 wait_for can stall shutdown.
                async with asyncio.timeout(interval if interval > 0 else None):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                expired = await manager.expire_idle()
            except MeshError as e:
                log.warning("idle sweep failed: %s", e)
                continue
            if expired:
                log.info("idle sweep unloaded %s", ", ".join(expired))

    async def stop(self) -> None:
        await self._tasks.close()
