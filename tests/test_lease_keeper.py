"""LeaseKeeper keeps a lease alive, and reports when it is lost."""

from __future__ import annotations

import asyncio

from mesh.clock import FakeClock
from mesh.errors import Unavailable
from mesh.registry.keys import KeySchema
from mesh.registry.lease import LeaseKeeper
from mesh.registry.memory_store import MemoryStore


async def test_kept_lease_outlives_its_ttl_and_revoke_removes_keys(store, keys: KeySchema) -> None:
    keeper = LeaseKeeper(store, ttl_s=2)
    lease = await keeper.start()
    await store.put(keys.instance("kept"), b"x", lease=lease)
    await asyncio.sleep(3.5)
    assert await store.get(keys.instance("kept")) is not None
    assert not keeper.lost.is_set()
    await keeper.stop(revoke=True)
    assert await store.get(keys.instance("kept")) is None


async def test_loss_is_reported(store, keys: KeySchema) -> None:
    reasons: list[str] = []
    keeper = LeaseKeeper(store, ttl_s=2, on_lost=reasons.append)
    lease = await keeper.start()
    await store.revoke_lease(lease)  # e.g. an operator, or expiry during a long pause
    await asyncio.wait_for(keeper.lost.wait(), 5)
    assert reasons and f"{lease:x}" in reasons[0]
    await keeper.stop()


class _Unreachable:
    """A store whose lease refreshes fail with Unavailable while ``down`` (etcd stopped)."""

    def __init__(self, store) -> None:
        self._store = store
        self.down = False
        self.description = store.description

    async def grant_lease(self, ttl_s: int) -> int:
        return await self._store.grant_lease(ttl_s)

    async def refresh_lease(self, lease_id: int) -> int:
        if self.down:
            raise Unavailable("etcd at 127.0.0.1:1: lease keep-alive failed (UNAVAILABLE)")
        return await self._store.refresh_lease(lease_id)

    async def revoke_lease(self, lease_id: int) -> None:
        await self._store.revoke_lease(lease_id)


async def _until(cond, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)


async def test_an_outage_past_the_ttl_is_not_a_loss_while_etcd_still_holds_the_lease() -> None:
    # etcd's own clock stands still: a restarted etcd extends its leases, it does not expire them.
    store = _Unreachable(MemoryStore(FakeClock()))
    reasons: list[str] = []
    keeper = LeaseKeeper(store, ttl_s=1, on_lost=reasons.append)  # type: ignore[arg-type]
    await keeper.start()
    store.down = True
    await _until(lambda: keeper.overdue)  # the TTL passed with no refresh getting through
    assert not keeper.lost.is_set()
    store.down = False
    await _until(lambda: not keeper.overdue)  # the next refresh got through: the same lease
    assert not keeper.lost.is_set() and reasons == []
    await keeper.stop()
