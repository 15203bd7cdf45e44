"""A lease kept alive in the background, reporting its loss.

The keeper refreshes every ``ttl/3``. Transient failures (etcd unreachable) are
retried for as long as they last, even past the lease's TTL: only etcd knows
whether the lease expired. An etcd that was down, not partitioned away, still
holds it when it comes back (a restarted etcd extends every lease by its TTL),
so the first refresh that gets through keeps every key in place. When etcd says
the lease is gone, ``lost`` is set and ``on_lost`` runs once; the owner decides
what to do (a runtime re-creates its keys under a new lease). ``overdue`` says
the TTL passed without a refresh getting through (the keys may be gone).
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
        #: The TTL passed with no refresh getting through: etcd may have dropped the keys.
        self.overdue = False

    async def start(self) -> int:
        """Grants the lease and starts keeping it alive; returns its id."""
        self.lease_id = await self._store.grant_lease(self.ttl_s)
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"lease-{self.lease_id:x}")
        return self.lease_id

    async def _run(self) -> None:
        expires = self._clock.monotonic() + self.ttl_s
        interval = max(0.2, self.ttl_s / 3)
        # While etcd is unreachable, try more often: the first refresh after it is back
        # must land before a restarted etcd's grace (one TTL) runs out.
        retry = min(interval, 0.5)
        failing = False
        while True:
            await asyncio.sleep(retry if failing else interval)
            try:
                ttl = await self._store.refresh_lease(self.lease_id)
            except LeaseLost as e:
                self._mark_lost(str(e))
                return
            except Unavailable as e:
                if not failing:
                    log.warning("lease %x refresh failed, retrying until etcd answers: %s", self.lease_id, e)
                failing = True
                if not self.overdue and self._clock.monotonic() >= expires:
                    self.overdue = True
                    log.warning("lease %x not refreshed within its %ds TTL; its keys stay if etcd still holds it",
                                self.lease_id, self.ttl_s)
                continue
            if failing:
                log.info("lease %x refreshed again (etcd reachable)", self.lease_id)
            failing, self.overdue = False, False
            expires = self._clock.monotonic() + ttl

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
