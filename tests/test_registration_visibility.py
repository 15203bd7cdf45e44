"""Read-your-writes on the registration path, across routers, with a slow watch.

A registration applies its committed record to the writer's mirror itself (no wait
for the watch to bring it back); a router asked about an id its mirror lacks reads
it from the registry before it says NOT_FOUND. The watch is held back here by a
store wrapper, so each test decides exactly what the watch has delivered.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.registry import records as rec
from mesh.registry.etcd_store import EtcdStore
from mesh.registry.keys import KeySchema, ParsedKey
from mesh.registry.mirror import RegistryMirror
from mesh.registry.registry import Registry
from mesh.registry.store import KVStore, WatchEvent
from router.server import RouterServer
from tests.router_support import MiniMesh, mini, until  # noqa: F401 - fixture
from tests.test_router import Client, router_settings

MS = mm.ModelStatusInfo


class HeldWatch:
    """A real store whose watch delivers events only up to ``through`` (a slow watch);
    with ``open_on_get``, a ``get()`` (a reader's strong read) opens it for good."""

    def __init__(self, inner: Any, *, open_on_get: bool = False) -> None:
        self._inner = inner
        self.description = inner.description
        self.through = 0
        self._moved = asyncio.Event()
        self.open_on_get = open_on_get
        self.gets = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def release_through(self, revision: int) -> None:
        self.through = revision
        self._moved.set()

    async def get(self, key: bytes) -> Any:
        self.gets += 1
        kv = await self._inner.get(key)
        if self.open_on_get:
            self.release_through(2**62)
        return kv

    async def watch(self, prefix: bytes, *, start_revision: int) -> AsyncIterator[WatchEvent]:
        async for ev in self._inner.watch(prefix, start_revision=start_revision):
            while ev.revision > self.through:
                self._moved.clear()
                await self._moved.wait()
            yield ev


def _model(model_id: str, path: str = "/models/m.onnx") -> rec.ModelRecord:
    return rec.ModelRecord(model_id, "onnx", path, "", registered_ms=1, last_used_ms=1)


@pytest.fixture
async def held(store: KVStore, keys: KeySchema) -> AsyncIterator[tuple[HeldWatch, RegistryMirror, list[Any]]]:
    slow = HeldWatch(store)
    mirror = RegistryMirror(slow, keys)  # type: ignore[arg-type]
    seen: list[Any] = []
    mirror.subscribe(lambda key, record: seen.append((key, record)) if key.kind == "model" else None)
    await mirror.start()
    yield slow, mirror, seen
    await mirror.stop()


async def test_own_write_is_served_before_the_watch_brings_it_back_and_applied_once(held, keys, store) -> None:
    slow, mirror, seen = held
    registry = Registry(store, keys)
    model = _model("fleet/a")
    revision = await registry.create_model(model)
    mirror.apply_local(keys.model("fleet/a"), model, revision)
    assert mirror.models["fleet/a"] is model
    assert mirror.revision < revision  # other keys' earlier writes may still be on their way

    slow.release_through(revision)
    await mirror.wait_for(revision)
    # The watch's copy of the same write is skipped: not decoded again, listeners told once.
    assert mirror.models["fleet/a"] is model
    assert seen == [(ParsedKey("model", "fleet/a"), model)]


async def test_an_older_event_arriving_late_does_not_undo_a_newer_own_write(held, keys, store) -> None:
    slow, mirror, _ = held
    registry = Registry(store, keys)
    first = await registry.create_model(_model("fleet/b", "/models/old.onnx"))
    await registry.delete_model("fleet/b")
    newer = _model("fleet/b", "/models/new.onnx")
    revision = await registry.create_model(newer)
    mirror.apply_local(keys.model("fleet/b"), newer, revision)

    slow.release_through(revision - 1)  # the old put and the delete arrive after the new write was applied
    await mirror.wait_for(revision - 1)
    assert mirror.revision < revision and first < revision
    assert mirror.models["fleet/b"].path == "/models/new.onnx"

    slow.release_through(revision)
    await mirror.wait_for(revision)
    assert mirror.models["fleet/b"].path == "/models/new.onnx"
    await registry.delete_model("fleet/b")  # a later write of the key applies as usual
    slow.release_through(2**62)
    await mirror.wait_for(await store.revision())
    assert "fleet/b" not in mirror.models


async def test_refresh_reads_another_routers_write_before_the_watch_brings_it(store, keys) -> None:
    slow = HeldWatch(store)  # never released: the watch delivers nothing
    mirror = RegistryMirror(slow, keys)  # type: ignore[arg-type]
    await mirror.start()
    try:
        registry = Registry(store, keys)
        revision = await registry.create_model(_model("elsewhere/c"))  # another router's write
        assert "elsewhere/c" not in mirror.models
        await mirror.refresh(keys.model("elsewhere/c"), keys.model("elsewhere/absent"))
        assert mirror.models["elsewhere/c"].path == "/models/m.onnx"
        assert "elsewhere/absent" not in mirror.models
        slow.release_through(revision)  # the watch's copy, when it comes, changes nothing
        await mirror.wait_for(revision)
        assert "elsewhere/c" in mirror.models
    finally:
        await mirror.stop()


async def _router(etcd_server: Any, mesh_name: str, store: Any) -> tuple[RouterServer, Client]:
    server = RouterServer(router_settings(etcd_server, mesh_name), store=store)
    await server.start()
    return server, Client(server.endpoint)


async def test_a_model_registered_on_one_router_is_seen_at_once_on_both(etcd_server, mesh_name) -> None:
    # Neither router's watch delivers anything: what each knows comes from its own writes and reads.
    stores = [HeldWatch(EtcdStore(etcd_server.endpoint)) for _ in range(2)]
    (a, ca), (b, cb) = [await _router(etcd_server, mesh_name, s) for s in stores]
    try:
        for i in range(5):
            mid = f"team/fleet-{i}"
            assert (await ca.register(mid)).status == MS.NOT_LOADED
            # The writer: from its own commit, without reading it back (its watch stays held).
            assert (await ca.mesh.getModelStatus(mm.GetStatusRequest(modelId=mid))).status == MS.NOT_LOADED
            assert stores[0].gets == 0
            # Any other router: it reads the id from the registry before it would say NOT_FOUND.
            assert (await cb.mesh.getModelStatus(mm.GetStatusRequest(modelId=mid))).status == MS.NOT_LOADED
        # Unknown ids are still NOT_FOUND (after the read).
        assert (await cb.mesh.getModelStatus(mm.GetStatusRequest(modelId="team/never"))).status == MS.NOT_FOUND
        # Registering the same id again through the other router is the usual no-op.
        assert (await cb.register("team/fleet-0")).status == MS.NOT_LOADED
    finally:
        for server, client in ((a, ca), (b, cb)):
            await client.channel.close()
            await server.stop(0)  # closes its store


async def test_inference_on_another_router_right_after_registration_loads_and_answers(
        mini: MiniMesh, etcd_server, mesh_name) -> None:
    await mini.runtimes(2)
    writer, cw = await mini.router()
    slow = HeldWatch(EtcdStore(etcd_server.endpoint))
    reader, cr = await _router(etcd_server, mesh_name, slow)
    try:
        slow.release_through(await slow._inner.revision())  # it knows the runtimes, nothing later
        await until(lambda: len(reader.mirror.instances) == 2, "the reader to see both runtimes")
        slow.open_on_get = True  # after its strong read, the reader's watch flows (copies, loads)
        await cw.register("team/served")
        resp = await cr.infer("team/served")
        assert resp.model_name == "team/served"
        assert slow.gets >= 1  # it read the id rather than answering NOT_FOUND
    finally:
        await cr.channel.close()
        await reader.stop(0)
