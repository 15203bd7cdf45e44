"""LeaseKeeper keeps a lease alive, and reports when it is lost."""

from __future__ import annotations

import asyncio

from mesh.registry.keys import KeySchema
from mesh.registry.lease import LeaseKeeper


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
