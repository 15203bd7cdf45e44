"""Placement's per-instance sums of the copy keys, kept from the mirror's events
(router/usage.py), always equal a full walk of the mirror's copies — through puts,
overwrites, deletes, a lease that expires with its keys, and a mirror reload.
Real etcd and the real mirror."""

from __future__ import annotations

import random

from mesh.registry import records as rec
from mesh.registry.keys import KeySchema
from mesh.registry.mirror import RegistryMirror
from mesh.registry.registry import Registry
from router.usage import CopyUsage


def walked(mirror: RegistryMirror, instance_id: str) -> tuple[int, int]:
    copies = [c for per in mirror.copies.values() for i, c in per.items() if i == instance_id]
    return sum(c.size_bytes for c in copies), len(copies)


def walked_typical(mirror: RegistryMirror) -> int:
    sizes = [c.size_bytes for per in mirror.copies.values() for c in per.values() if c.size_bytes]
    return max(1, sum(sizes) // len(sizes)) if sizes else 1


def check(usage: CopyUsage, mirror: RegistryMirror, instances: list[str]) -> None:
    for i in instances:
        assert usage.of(i) == walked(mirror, i), i
    assert usage.typical_size() == walked_typical(mirror)


async def test_copy_usage_matches_a_full_walk(etcd_store, keys: KeySchema) -> None:
    registry = Registry(etcd_store, keys)
    mirror = RegistryMirror(etcd_store, keys)
    await mirror.start()
    usage = CopyUsage(mirror)
    rng = random.Random(15)
    try:
        leases = {i: await etcd_store.grant_lease(30) for i in ("rt-a", "rt-b", "rt-c")}
        instances = list(leases)
        assert usage.of("rt-a") == (0, 0) and usage.typical_size() == 1
        for step in range(120):
            model, inst = f"m{rng.randrange(12)}", rng.choice(instances)
            if rng.random() < 0.3:
                await registry.delete_copy(model, inst)
            else:  # a claim without a size, a LOADING prediction, a LOADED measurement
                state = rng.choice((rec.LOADING, rec.LOADED))
                size = rng.choice((0, 100, 2_000, 30_000))
                await registry.put_copy(rec.CopyRecord(model, inst, state, size_bytes=size), lease=leases[inst])
            await mirror.wait_for(await etcd_store.revision())
            check(usage, mirror, instances)
        # A runtime's lease expires: all its copy keys go at once.
        await etcd_store.revoke_lease(leases["rt-b"])
        await mirror.wait_for(await etcd_store.revision())
        check(usage, mirror, instances)
        assert usage.of("rt-b") == (0, 0)
        # The mirror reloads (what it does after a compacted watch): no per-key events.
        await registry.put_copy(rec.CopyRecord("fresh", "rt-a", rec.LOADED, size_bytes=7), lease=leases["rt-a"])
        await mirror._load()
        check(usage, mirror, instances)
        await registry.delete_copy("fresh", "rt-a")
        await mirror.wait_for(await etcd_store.revision())
        check(usage, mirror, instances)
    finally:
        await mirror.stop()
