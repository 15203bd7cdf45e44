"""The router against real etcd, real gRPC, and fake runtimes that speak the real SPI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from tritonclient.grpc import service_pb2 as v2
from tritonclient.grpc import service_pb2_grpc as v2_grpc

from mesh.clock import FakeClock
from mesh.proto.meshserve.v1 import admin_pb2 as adm
from mesh.proto.meshserve.v1 import admin_pb2_grpc as adm_grpc
from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.proto.mmesh import model_mesh_pb2_grpc as mm_grpc
from mesh.registry.etcd_store import EtcdStore
from mesh.registry.registry import Registry
from router.server import RouterServer
from router.settings import RouterSettings
from tests.fake_runtime import FakeRuntime

MS = mm.ModelStatusInfo


class Client:
    def __init__(self, endpoint: str) -> None:
        self.channel = grpc.aio.insecure_channel(endpoint)
        self.mesh = mm_grpc.ModelMeshStub(self.channel)
        self.v2 = v2_grpc.GRPCInferenceServiceStub(self.channel)
        self.admin = adm_grpc.MeshAdminStub(self.channel)

    async def register(self, model_id: str, **kw) -> mm.ModelStatusInfo:
        info = mm.ModelInfo(type=kw.pop("type", "onnx"), path=kw.pop("path", f"/models/{model_id}.onnx"))
        return await self.mesh.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=info, **kw))

    async def infer(self, name: str, payload: bytes = b"\x00" * 8, metadata=(), timeout: float = 20) -> v2.ModelInferResponse:
        req = v2.ModelInferRequest(model_name=name)
        req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 2])
        req.raw_input_contents.append(payload)
        return await self.v2.ModelInfer(req, metadata=metadata, timeout=timeout)


@pytest.fixture
async def registry(etcd_server, keys) -> AsyncIterator[Registry]:
    store = EtcdStore(etcd_server.endpoint)
    await store.start()
    yield Registry(store, keys)
    await store.close()


@pytest.fixture
async def runtimes(registry: Registry) -> AsyncIterator[list[FakeRuntime]]:
    rts = [FakeRuntime(registry, f"rt-{i}", capacity_models=3) for i in range(2)]
    for rt in rts:
        await rt.start()
    yield rts
    for rt in rts:
        await rt.stop()


def router_settings(etcd_server, mesh_name: str, **kw) -> RouterSettings:
    return RouterSettings(etcd=etcd_server.endpoint, mesh=mesh_name, listen="127.0.0.1:0",
                          scale_interval_s=3600, **kw)


@pytest.fixture
async def router(etcd_server, mesh_name, runtimes) -> AsyncIterator[RouterServer]:
    server = RouterServer(router_settings(etcd_server, mesh_name))
    await server.start()
    yield server
    await server.stop(0)


@pytest.fixture
async def client(router: RouterServer) -> AsyncIterator[Client]:
    c = Client(router.endpoint)
    yield c
    await c.channel.close()


async def test_register_then_infer_loads_on_first_request(client: Client, runtimes) -> None:
    status = await client.register("m1")
    assert status.status == MS.NOT_LOADED
    resp = await client.infer("m1", b"\x01" * 8)
    assert resp.model_name == "m1" and resp.raw_output_contents[0] == b"\x01" * 8
    status = await client.mesh.getModelStatus(mm.GetStatusRequest(modelId="m1"))
    assert status.status == MS.LOADED
    assert [c.location for c in status.modelCopyInfos] == [resp.id]
    assert sum(rt.loads.get("m1", 0) for rt in runtimes) == 1


async def test_header_id_wins_and_unknown_model_is_not_found(client: Client) -> None:
    await client.register("real")
    resp = await client.infer("ignored-name", metadata=(("mm-model-id", "real"),))
    assert resp.model_name == "real"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.infer("nope")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in err.value.details()
    status = await client.mesh.getModelStatus(mm.GetStatusRequest(modelId="nope"))
    assert status.status == MS.NOT_FOUND


async def test_many_models_few_slots_every_answer_right_and_statuses_true(client: Client, runtimes) -> None:
    ids = [f"zipf-{i}" for i in range(12)]  # 2 runtimes x 3 slots
    for mid in ids:
        await client.register(mid)
    for round_ in range(2):
        for mid in ids:
            payload = mid.encode().ljust(8, b".")[:8]
            resp = await client.infer(mid, payload)
            assert resp.model_name == mid and resp.raw_output_contents[0] == payload
    loaded = 0
    for mid in ids:
        st = await client.mesh.getModelStatus(mm.GetStatusRequest(modelId=mid))
        held = [rt.instance_id for rt in runtimes if mid in rt.loaded]
        assert [c.location for c in st.modelCopyInfos if c.copyStatus == MS.LOADED] == held
        loaded += bool(held)
    assert loaded == 6
    assert sum(sum(rt.loads.values()) for rt in runtimes) > 12  # evictions forced reloads


async def test_concurrent_first_requests_load_once(client: Client, runtimes) -> None:
    for rt in runtimes:
        rt.load_delay_s = 0.5
    await client.register("hot")
    results = await asyncio.gather(*(client.infer("hot") for _ in range(20)))
    assert all(r.model_name == "hot" for r in results)
    assert sum(rt.loads.get("hot", 0) for rt in runtimes) == 1


async def test_two_routers_on_one_etcd_load_a_model_once(etcd_server, mesh_name, runtimes, router, client) -> None:
    for rt in runtimes:
        rt.load_delay_s = 0.5
    second = RouterServer(router_settings(etcd_server, mesh_name))
    await second.start()
    other = Client(second.endpoint)
    try:
        await client.register("shared")
        await second.mirror.wait_for(await router.store.revision())  # registered through the first router
        results = await asyncio.gather(*(c.infer("shared") for c in (client, other) for _ in range(10)))
        assert {r.model_name for r in results} == {"shared"}
        assert sum(rt.loads.get("shared", 0) for rt in runtimes) == 1
    finally:
        await other.channel.close()
        await second.stop(0)


async def test_runtime_crash_requests_retry_elsewhere_and_copies_vanish(client: Client, runtimes, router) -> None:
    await client.register("survivor")
    first = await client.infer("survivor")
    dead = next(rt for rt in runtimes if rt.instance_id == first.id)
    await dead.crash()
    for _ in range(5):
        resp = await client.infer("survivor")
        assert resp.id != dead.instance_id
    deadline = asyncio.get_running_loop().time() + 15
    while dead.instance_id in router.mirror.instances:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.2)
    st = await client.mesh.getModelStatus(mm.GetStatusRequest(modelId="survivor"))
    assert dead.instance_id not in [c.location for c in st.modelCopyInfos]


async def test_a_model_evicted_while_requests_wait_is_reloaded_and_every_request_answered(
        client: Client, runtimes, router) -> None:
    await client.register("evicted")
    holder_id = (await client.infer("evicted")).id
    holder = next(rt for rt in runtimes if rt.instance_id == holder_id)
    holder.forget("evicted")  # gone from memory; the router still sees a LOADED copy there
    answers = await asyncio.gather(*(client.infer("evicted") for _ in range(6)))
    assert all(a.model_name == "evicted" for a in answers)
    assert sum(rt.loads.get("evicted", 0) for rt in runtimes) == 2  # one reload for all who waited


async def test_load_failures_become_loading_failed_with_reasons(client: Client, runtimes) -> None:
    for rt in runtimes:
        rt.fail_models["broken"] = "model file is corrupt: bad magic"
    await client.register("broken")
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.infer("broken")
        assert "corrupt" in err.value.details()
    st = await client.mesh.getModelStatus(mm.GetStatusRequest(modelId="broken"))
    assert st.status == MS.LOADING_FAILED
    assert len(st.errors) >= 3 and all("corrupt" in e for e in st.errors)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.infer("broken")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "LOADING_FAILED" in err.value.details()


async def test_vmodel_moves_only_when_target_loaded_without_failed_requests(client: Client, runtimes) -> None:
    await client.register("v1")
    await client.mesh.setVModel(mm.SetVModelRequest(vModelId="prod", targetModelId="v1"))
    assert (await client.infer("prod")).model_name == "v1"
    for rt in runtimes:
        rt.load_delay_s = 1.0
    await client.register("v2")
    st = await client.mesh.setVModel(mm.SetVModelRequest(vModelId="prod", targetModelId="v2"))
    assert st.status == mm.VModelStatusInfo.TRANSITIONING and st.activeModelId == "v1"
    served = []
    deadline = asyncio.get_running_loop().time() + 30
    while not served or served[-1] != "v2":
        assert asyncio.get_running_loop().time() < deadline, f"never moved to v2: {served[-5:]}"
        served.append((await client.infer("prod", metadata=(("mm-vmodel-id", "prod"),))).model_name)
        await asyncio.sleep(0.05)
    assert served[0] == "v1" and served[-1] == "v2"
    st = await client.mesh.getVModelStatus(mm.GetVModelStatusRequest(vModelId="prod"))
    assert st.status == mm.VModelStatusInfo.DEFINED and st.activeModelId == "v2"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.mesh.unregisterModel(mm.UnregisterModelRequest(modelId="v2"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "prod" in err.value.details()


async def test_sync_register_and_auto_delete_target(client: Client) -> None:
    st = await client.mesh.setVModel(mm.SetVModelRequest(
        vModelId="vm", targetModelId="auto-1", modelInfo=mm.ModelInfo(type="onnx", path="/m/a1"),
        autoDeleteTargetModel=True, sync=True))
    assert st.activeModelStatus.status == MS.LOADED
    await client.mesh.setVModel(mm.SetVModelRequest(
        vModelId="vm", targetModelId="auto-2", modelInfo=mm.ModelInfo(type="onnx", path="/m/a2"),
        autoDeleteTargetModel=True, sync=True))
    st = await client.mesh.getModelStatus(mm.GetStatusRequest(modelId="auto-1"))
    assert st.status == MS.NOT_FOUND  # auto-deleted once nothing referred to it
    await client.mesh.deleteVModel(mm.DeleteVModelRequest(vModelId="vm"))
    assert (await client.mesh.getModelStatus(mm.GetStatusRequest(modelId="auto-2"))).status == MS.NOT_FOUND
    st = await client.mesh.getVModelStatus(mm.GetVModelStatusRequest(vModelId="vm"))
    assert st.status == mm.VModelStatusInfo.NOT_FOUND


@pytest.mark.parametrize(
    "request_,fragment",
    [
        (mm.RegisterModelRequest(modelId="../x", modelInfo=mm.ModelInfo(type="onnx")), "'..'"),
        (mm.RegisterModelRequest(modelId="ok", modelInfo=mm.ModelInfo(type="")), "type is required"),
        (mm.RegisterModelRequest(modelId="ok", modelInfo=mm.ModelInfo(type="onnx", path="ftp://x/y")), "scheme"),
    ],
)
async def test_bad_registrations_are_invalid_argument(client: Client, request_, fragment: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.mesh.registerModel(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and fragment in err.value.details()


async def test_reregister_same_is_idempotent_different_is_refused(client: Client) -> None:
    await client.register("same")
    await client.register("same")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.register("same", type="pytorch")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_garbage_bytes_and_runtime_errors_pass_through(client: Client) -> None:
    raw = client.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await raw(b"\xff\xff\xff\xff")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await raw(b"")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "model_name" in err.value.details()
    await client.register("strict")
    req = v2.ModelInferRequest(model_name="strict")
    req.inputs.add(name="BAD", datatype="FP32", shape=[1])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.v2.ModelInfer(req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "BAD" in err.value.details()


async def test_model_ready_and_server_calls(client: Client) -> None:
    assert (await client.v2.ServerLive(v2.ServerLiveRequest())).live
    assert (await client.v2.ServerReady(v2.ServerReadyRequest())).ready
    await client.register("r")
    assert not (await client.v2.ModelReady(v2.ModelReadyRequest(name="r"))).ready
    await client.infer("r")
    assert (await client.v2.ModelReady(v2.ModelReadyRequest(name="r"))).ready
    assert not (await client.v2.ModelReady(v2.ModelReadyRequest(name="unknown"))).ready


async def test_admin_lists_pages_cluster_and_policy(client: Client, runtimes) -> None:
    for i in range(7):
        await client.register(f"team/m{i}")
    await client.register("other")
    await client.infer("team/m0")
    page = await client.admin.ListModels(adm.ListModelsRequest(prefix="team/", page_size=5))
    assert [m.model_id for m in page.models] == [f"team/m{i}" for i in range(5)] and page.next_page_token
    rest = await client.admin.ListModels(adm.ListModelsRequest(prefix="team/", page_size=5, page_token=page.next_page_token))
    assert [m.model_id for m in rest.models] == ["team/m5", "team/m6"] and not rest.next_page_token
    assert page.models[0].status == "LOADED" and page.models[1].status == "NOT_LOADED"
    cluster = await client.admin.GetClusterStatus(adm.GetClusterStatusRequest())
    assert {i.instance_id for i in cluster.instances} == {"rt-0", "rt-1"}
    assert cluster.registered_models == 8 and cluster.loaded_copies == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.admin.SetPolicy(adm.SetPolicyRequest(document="{nope"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    p = await client.admin.SetPolicy(adm.SetPolicyRequest(document='{"eviction": "lru"}'))
    assert (await client.admin.GetPolicy(adm.GetPolicyRequest())).revision == p.revision


async def test_copies_scale_up_under_load_and_idle_extras_go_back(etcd_server, mesh_name, runtimes) -> None:
    clock = FakeClock()
    server = RouterServer(router_settings(etcd_server, mesh_name, scale_up_rpm=60, idle_copy_s=30), clock=clock)
    await server.start()
    client = Client(server.endpoint)
    try:
        await client.register("busy")
        for _ in range(30):
            await client.infer("busy")
        clock.advance(10)
        await server.scaler.tick()  # 30 requests in 10 s: 180/min > 60/min on one copy
        st = await client.mesh.getModelStatus(mm.GetStatusRequest(modelId="busy"))
        assert sorted(c.location for c in st.modelCopyInfos) == ["rt-0", "rt-1"]
        clock.advance(21)
        await server.scaler.tick()  # unused for 31 s > 30 s now: the extra copy goes back, one stays
        await server.mirror.wait_for(await server.store.revision())  # the runtime's key delete, mirrored
        st = await client.mesh.getModelStatus(mm.GetStatusRequest(modelId="busy"))
        assert len(st.modelCopyInfos) == 1 and st.status == MS.LOADED
    finally:
        await client.channel.close()
        await server.stop(0)


async def test_min_and_max_copies_are_honoured(etcd_server, mesh_name, runtimes) -> None:
    server = RouterServer(router_settings(etcd_server, mesh_name, scale_up_rpm=1, idle_copy_s=0))
    await server.start()
    client = Client(server.endpoint)
    try:
        await client.register("pinned")
        await client.admin.SetModelConfig(adm.SetModelConfigRequest(model_id="pinned", min_copies=2))
        await server.scaler.tick()
        st = await client.mesh.getModelStatus(mm.GetStatusRequest(modelId="pinned"))
        assert len([c for c in st.modelCopyInfos if c.copyStatus == MS.LOADED]) == 2
        await client.register("capped")
        await client.admin.SetModelConfig(adm.SetModelConfigRequest(model_id="capped", max_copies=1))
        for _ in range(20):
            await client.infer("capped")
        await server.scaler.tick()
        st = await client.mesh.getModelStatus(mm.GetStatusRequest(modelId="capped"))
        assert len(st.modelCopyInfos) == 1
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.admin.SetModelConfig(adm.SetModelConfigRequest(model_id="capped", min_copies=3, max_copies=1))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.admin.SetModelConfig(adm.SetModelConfigRequest(model_id="ghost", min_copies=1))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await client.channel.close()
        await server.stop(0)


async def test_model_labels_constrain_placement(etcd_server, mesh_name, runtimes, client: Client) -> None:
    await client.register("gpu-only")
    await client.admin.SetModelConfig(adm.SetModelConfigRequest(model_id="gpu-only", labels={"require.device": "gpu"}))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.infer("gpu-only")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "labels" in err.value.details()


async def test_drain_stops_new_loads_there_in_every_router(etcd_server, mesh_name, runtimes, router, client) -> None:
    other = RouterServer(router_settings(etcd_server, mesh_name))
    await other.start()
    other_client = Client(other.endpoint)
    try:
        resp = await client.admin.DrainInstance(adm.DrainInstanceRequest(instance_id="rt-0"))
        assert resp.instance_id == "rt-0"
        for i in range(6):
            await client.register(f"d{i}")
        await other.mirror.wait_for(await router.store.revision())  # drain and models came via the first
        # Loads through either router land only on the instance that is not drained.
        for i in range(6):
            c = client if i % 2 else other_client
            assert (await c.infer(f"d{i}")).id == "rt-1"
        cluster = await other_client.admin.GetClusterStatus(adm.GetClusterStatusRequest())
        assert {i.instance_id: i.shutting_down for i in cluster.instances} == {"rt-0": True, "rt-1": False}
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.admin.DrainInstance(adm.DrainInstanceRequest(instance_id="nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await other_client.channel.close()
        await other.stop(0)
