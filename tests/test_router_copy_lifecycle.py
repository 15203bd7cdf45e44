"""Copies come and go as the README says: background loads, unregister, janitor, drain, labels."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from mesh.proto.meshserve.v1 import admin_pb2 as adm
from mesh.proto.mmesh import model_mesh_pb2 as mm
from tests.router_support import MS, MiniMesh, rpc_error, status, two_copies, until
from tests.router_support import mini  # noqa: F401 - the fixture


async def test_load_now_and_ensure_loaded_return_before_the_load_finishes(mini: MiniMesh) -> None:
    rts = await mini.runtimes(2, capacity_models=3)
    router, client = await mini.router()
    gate = asyncio.Event()
    for rt in rts:
        rt.load_gate = gate  # no load can finish until the test says so
    st = await client.register("eager", loadNow=True)
    assert st.status in (MS.NOT_LOADED, MS.LOADING)
    await client.register("later")
    st = await client.mesh.ensureLoaded(mm.EnsureLoadedRequest(modelId="later"))
    assert st.status in (MS.NOT_LOADED, MS.LOADING)
    for mid in ("eager", "later"):  # both loads started in the background and are held
        await until(lambda: sum(rt.loads.get(mid, 0) for rt in rts) == 1, f"a background load of {mid}")
        assert (await status(client, mid)).status == MS.LOADING
    gate.set()
    for mid in ("eager", "later"):
        await until(_loaded(client, mid), f"{mid} LOADED")
    assert sum(sum(rt.loads.values()) for rt in rts) == 2


def _loaded(client, mid: str):
    async def check() -> bool:
        return (await status(client, mid)).status == MS.LOADED

    return check


async def test_unregister_unloads_every_copy(mini: MiniMesh) -> None:
    rts = await mini.runtimes(2, capacity_models=3)
    router, client = await mini.router()
    await two_copies(router, client, "m")
    assert all("m" in rt.loaded for rt in rts)
    await client.mesh.unregisterModel(mm.UnregisterModelRequest(modelId="m"))
    assert not any("m" in rt.loaded for rt in rts)
    assert mini.registry is not None and await mini.registry.list_copies("m") == []
    assert (await status(client, "m")).status == MS.NOT_FOUND


async def test_janitor_unloads_copies_of_a_model_no_longer_registered(mini: MiniMesh) -> None:
    (rt,) = await mini.runtimes(1, capacity_models=3)
    router, client = await mini.router()
    await client.register("orphan")
    await client.infer("orphan")
    assert mini.registry is not None
    # Deleted behind the router's back (e.g. a router that died mid-unregister): the copy stays.
    await mini.registry.delete_model("orphan")
    await until(lambda: "orphan" not in router.mirror.models, "the mirror to drop the model")
    assert "orphan" in rt.loaded
    await router.scaler.tick()
    assert "orphan" not in rt.loaded
    assert await mini.registry.list_copies("orphan") == []


async def test_drained_instance_keeps_serving_the_copies_it_holds(mini: MiniMesh) -> None:
    rts = await mini.runtimes(2, capacity_models=3)
    router, client = await mini.router()
    await client.register("m")
    holder = (await client.infer("m")).id
    other = next(rt for rt in rts if rt.instance_id != holder)
    await client.admin.DrainInstance(adm.DrainInstanceRequest(instance_id=holder))
    await until(lambda: router.table.drained(holder), "the drain in the mirror")
    for _ in range(5):
        assert (await client.infer("m")).id == holder
    assert sum(rt.loads.get("m", 0) for rt in rts) == 1  # no new copy elsewhere
    await client.register("new")
    assert (await client.infer("new")).id == other.instance_id  # new loads avoid it


async def test_model_requiring_a_label_is_placed_where_the_label_is(mini: MiniMesh) -> None:
    await mini.runtimes(2, capacity_models=5)  # rt-0, rt-1: no labels
    (gpu,) = await mini.runtimes(1, capacity_models=5, labels={"device": "gpu"})
    router, client = await mini.router()
    for i in range(4):
        mid = f"needs-gpu-{i}"
        await client.register(mid)
        await client.admin.SetModelConfig(adm.SetModelConfigRequest(model_id=mid, labels={"require.device": "gpu"}))
        assert (await client.infer(mid)).id == gpu.instance_id
    # rt-0/rt-1 are emptier, so an unconstrained model goes there, not to the gpu runtime.
    await client.register("anywhere")
    assert (await client.infer("anywhere")).id != gpu.instance_id
    await client.register("needs-tpu")
    await client.admin.SetModelConfig(adm.SetModelConfigRequest(model_id="needs-tpu", labels={"require.device": "tpu"}))
    err = await rpc_error(client.infer("needs-tpu"))
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "labels" in err.details()
