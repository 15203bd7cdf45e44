"""A lease kept alive in the background, reporting its loss.

The keeper refreshes every ``ttl/3``. Transient failures are retried until the
lease's own deadline passes; then, or when etcd says the lease is gone, ``lost``
is set and ``on_lost`` runs once. The owner decides what to do (a runtime
re-registers under a new lease).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from mesh.clock import Clock, SystemClock
from mesh.errors import Unavailable
from mesh.registry.store import KVStore, LeaseLost

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(
        self,
        store: KVStore,
        ttl_s: int,
        *,
        clock: Clock | None = None,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self.ttl_s = ttl_s
        self._clock = clock or SystemClock()
        self._on_lost = on_lost
        self.lease_id = 0
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Grants the lease and starts keeping it alive; returns its id."""
        self.lease_id = await self._store.grant_lease(self.ttl_s)
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"lease-{self.lease_id:x}")
        return self.lease_id

    async def _run(self) -> None:
        expires = self._clock.monotonic() + self.ttl_s
        interval = max(0.2, self.ttl_s / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                ttl = await self._store.refresh_lease(self.lease_id)
                expires = self._clock.monotonic() + ttl
            except LeaseLost as e:
                self._mark_lost(str(e))
                return
            except Unavailable as e:
                if self._clock.monotonic() >= expires:
                    self._mark_lost(f"lease {self.lease_id:x} could not be refreshed before it expired: {e}")
                    return
                log.warning("lease %x refresh failed, retrying: %s", self.lease_id, e)

    def _mark_lost(self, reason: str) -> None:
        self.lost_reason = reason
        log.error("lease lost: %s", reason)
        self.lost.set()
        if self._on_lost:
            self._on_lost(reason)

    async def stop(self, *, revoke: bool = True) -> None:
        """Stops refreshing; with ``revoke`` its keys vanish at once."""
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if revoke and self.lease_id and not self.lost.is_set():
            try:
                await self._store.revoke_lease(self.lease_id)
            except Unavailable as e:
                log.warning("could not revoke lease %x (it will expire): %s", self.lease_id, e)
