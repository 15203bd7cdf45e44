"""The xDS snapshot costs nothing while no Envoy is connected (issue 15: model churn).

A router without Envoy in front used to rebuild every cluster and route after each
load and eviction; now the snapshot is only marked stale then, and built when an
Envoy connects or someone reads it. With an Envoy listening, changes still wake it.
Real etcd, the real mirror, the real XdsCache.
"""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("envoy.service.discovery.v3", reason="needs the envoy extra (xds-protos)")

from prometheus_client import CollectorRegistry  # noqa: E402

from mesh.clock import SystemClock  # noqa: E402
from mesh.registry import records as rec  # noqa: E402
from mesh.registry.keys import KeySchema  # noqa: E402
from mesh.registry.mirror import RegistryMirror  # noqa: E402
from mesh.registry.registry import Registry  # noqa: E402
from mesh.tasks import TaskSet  # noqa: E402
from router.xds.server import XdsCache, XdsMetrics  # noqa: E402
from router.xds.snapshot import build_snapshot  # noqa: E402
from router.xds.view import view_of  # noqa: E402


async def until(check, what: str, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.01)
    assert check(), what


async def test_no_envoy_no_rebuilds_and_a_connecting_envoy_gets_the_current_snapshot(etcd_store, keys: KeySchema) -> None:
    registry = Registry(etcd_store, keys)
    mirror = RegistryMirror(etcd_store, keys)
    await mirror.start()
    tasks = TaskSet("xds-test")
    metrics = XdsMetrics(CollectorRegistry())
    try:
        lease = await etcd_store.grant_lease(30)
        await registry.put_instance(rec.InstanceRecord("rt-1", "127.0.0.1:9000", lease_id=lease), lease=lease)
        cache = XdsCache(mirror, metrics, tasks, SystemClock(), debounce_s=0.0)
        cache.start()
        builds = metrics.builds._value.get()
        for i in range(5):  # loads with nobody listening: marked stale, never built
            await registry.create_model(rec.ModelRecord(f"m{i}", "onnx"))
            rev = await registry.put_copy(rec.CopyRecord(f"m{i}", "rt-1", rec.LOADED, size_bytes=10), lease=lease)
            await mirror.wait_for(rev)
        await until(lambda: cache._stale, "the cache noticed the changes")
        assert metrics.builds._value.get() == builds

        wake = cache.listen()  # an Envoy connects: it is sent what the mirror holds now
        assert cache.snapshot.route_version == build_snapshot(view_of(mirror)).route_version
        assert set(view_of(mirror).models) == {f"m{i}" for i in range(5)}
        assert metrics.builds._value.get() == builds + 1

        # With an Envoy listening, a change is built and wakes its stream.
        rev = await registry.put_copy(rec.CopyRecord("m0", "rt-1", rec.LOADING), lease=lease)
        await mirror.wait_for(rev)
        async with asyncio.timeout(20):
            await wake.wait()
        assert cache.snapshot.route_version == build_snapshot(view_of(mirror)).route_version
        assert "m0" not in cache.view.models
        cache.forget(wake)
    finally:
        await tasks.close()
        await mirror.stop()
