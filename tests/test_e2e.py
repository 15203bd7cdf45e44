"""The whole mesh: real etcd, real runtime processes, the router, tritonclient messages.

Each test gets its own mesh name on the shared etcd and its own runtimes
(ONNX only, so they start without torch).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as v2
from tritonclient.grpc import service_pb2_grpc as v2_grpc

from mesh import modelgen
from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.proto.mmesh import model_mesh_pb2_grpc as mm_grpc
from router.server import RouterServer
from router.settings import RouterSettings
from tests.procs import RuntimeProc, start_runtime
from tests.runtime_helpers import scrape

MS = mm.ModelStatusInfo
SPEC = modelgen.spec_for_bytes(70_000, seed=0)
# One tiny model is charged ~170-175 KB (1.5 x file + 64 KiB): 1.8 MB holds 10.
TEN_TINY = 1_800_000


def start_runtimes(etcd: str, mesh: str, n: int, capacity: int) -> list[RuntimeProc]:
    # From this thread: runtimes die with the thread that spawned them (PR_SET_PDEATHSIG).
    env = {"MESHSERVE_MODEL_TYPES": "onnx", "MESHSERVE_LEASE_TTL_S": "3"}
    return [start_runtime(etcd, mesh, capacity=capacity, env=env,
                          extra_args=["--metrics-listen", "127.0.0.1:0", "--instance-id", f"rt{i}"])
            for i in range(n)]


@pytest.fixture
def capacity(request: pytest.FixtureRequest) -> int:
    return getattr(request, "param", TEN_TINY)


@pytest.fixture
def runtimes(etcd_server, mesh_name, capacity: int) -> Iterator[list[RuntimeProc]]:
    procs = start_runtimes(etcd_server.endpoint, mesh_name, 3, capacity)
    yield procs
    for p in procs:
        if p.running:
            p.kill()


async def start_router(etcd_server, mesh_name: str, expect: int, timeout_s: float = 30.0,
                       listen: str = "127.0.0.1:0", **settings) -> RouterServer:
    """An in-process router (on a free port by default), once its mirror sees ``expect`` runtimes.

    Fails (stopping the router) if they do not all show within ``timeout_s``."""
    router = RouterServer(RouterSettings(etcd=etcd_server.endpoint, mesh=mesh_name, listen=listen,
                                         scale_interval_s=3600, **settings))
    await router.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while len(router.mirror.instances) < expect:
        if loop.time() > deadline:
            seen = sorted(router.mirror.instances)
            await router.stop(0)
            raise AssertionError(f"the router saw {len(seen)} of {expect} runtimes within {timeout_s}s: {seen}")
        await asyncio.sleep(0.05)
    return router


@pytest.fixture
async def router(etcd_server, mesh_name, runtimes) -> AsyncIterator[RouterServer]:
    r = await start_router(etcd_server, mesh_name, len(runtimes))
    yield r
    await r.stop(0)


class Client:
    def __init__(self, endpoint: str) -> None:
        self.channel = grpc.aio.insecure_channel(endpoint)
        self.mesh = mm_grpc.ModelMeshStub(self.channel)
        self.v2 = v2_grpc.GRPCInferenceServiceStub(self.channel)

    async def register_all(self, files: list[tuple[modelgen.MlpSpec, Path]], prefix: str = "m") -> list[str]:
        ids = []
        for i, (_, path) in enumerate(files):
            mid = f"{prefix}{i:03d}"
            await self.mesh.registerModel(mm.RegisterModelRequest(
                modelId=mid, modelInfo=mm.ModelInfo(type="onnx", path=str(path))))
            ids.append(mid)
        return ids

    async def infer(self, name: str, spec: modelgen.MlpSpec, seed: int = 1, metadata=()) -> tuple[str, bool]:
        x = modelgen.sample_input(spec, batch=2, seed=seed)
        req = v2.ModelInferRequest(model_name=name)
        req.inputs.add(name="INPUT0", datatype="FP32", shape=list(x.shape))
        req.raw_input_contents.append(x.astype(np.float32).tobytes())
        resp = await self.v2.ModelInfer(req, metadata=metadata, timeout=30)
        out = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(list(resp.outputs[0].shape))
        return resp.model_name, bool(np.allclose(out, modelgen.reference_output(spec, x), rtol=1e-4, atol=1e-5))


@pytest.fixture
async def client(router: RouterServer) -> AsyncIterator[Client]:
    c = Client(router.endpoint)
    yield c
    await c.channel.close()


def successful_loads(procs: list[RuntimeProc], router: RouterServer) -> float:
    total = 0.0
    for p in procs:
        rec = router.mirror.instances.get(p.instance_id)
        assert rec is not None and rec.metrics_endpoint
        total += sum(v for k, v in scrape(rec.metrics_endpoint).items()
                     if k.startswith("meshserve_model_loads_total{") and "success" in k)
    return total


async def test_200_models_room_for_30_every_answer_right_evictions_statuses_true(
        client: Client, router: RouterServer, runtimes, model_files) -> None:
    ids = await client.register_all(model_files)
    for round_ in range(2):
        for mid, (spec, _) in zip(ids, model_files):
            name, ok = await client.infer(mid, spec, seed=round_)
            assert name == mid and ok, f"wrong answer from {mid}"
    # Statuses agree with what each runtime says it holds.
    loaded = 0
    for mid in ids:
        st = await client.mesh.getModelStatus(mm.GetStatusRequest(modelId=mid))
        where = sorted(c.location for c in st.modelCopyInfos if c.copyStatus == MS.LOADED)
        held = []
        for p in runtimes:
            async with grpc.aio.insecure_channel(p.endpoint) as ch:
                if (await v2_grpc.GRPCInferenceServiceStub(ch).ModelReady(v2.ModelReadyRequest(name=mid))).ready:
                    held.append(p.instance_id)
        assert where == sorted(held), (mid, where, held)
        assert st.status == (MS.LOADED if held else MS.NOT_LOADED)
        loaded += bool(held)
    assert 15 <= loaded <= 30, loaded  # room for ~30: evictions happened, space was used
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.infer("not-registered", SPEC)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "not-registered" in err.value.details()


async def test_vmodel_moves_to_a_new_target_without_a_failed_request(client: Client, model_files) -> None:
    (s1, p1), (_, p2) = model_files[0], model_files[1]
    for mid, path in (("v1", p1), ("v2", p2)):
        await client.mesh.registerModel(mm.RegisterModelRequest(modelId=mid, modelInfo=mm.ModelInfo(type="onnx", path=str(path))))
    await client.mesh.setVModel(mm.SetVModelRequest(vModelId="prod", targetModelId="v1", sync=True))
    stop = asyncio.Event()
    served: list[tuple[float, str]] = []  # (start time, model that answered)
    failures: list[BaseException] = []
    loop = asyncio.get_running_loop()

    async def traffic() -> None:
        while not stop.is_set():
            started = loop.time()
            try:
                name, _ = await client.infer("prod", s1, metadata=(("mm-vmodel-id", "prod"),))
                served.append((started, name))
            except grpc.aio.AioRpcError as e:
                failures.append(e)

    async def served_at_least(n: int, since: float) -> None:
        deadline = loop.time() + 30
        while sum(1 for started, _ in served if started >= since) < n and not failures:
            assert loop.time() < deadline, f"only {len(served)} requests served in 30 s"
            await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(traffic()) for _ in range(4)]
    await served_at_least(8, 0.0)  # traffic is flowing to v1
    st = await client.mesh.setVModel(mm.SetVModelRequest(vModelId="prod", targetModelId="v2", sync=True))
    switched_at = loop.time()
    assert st.activeModelId == "v2" and st.status == mm.VModelStatusInfo.DEFINED
    await served_at_least(8, switched_at)  # and keeps flowing after the switch
    stop.set()
    await asyncio.gather(*tasks)
    assert not failures, failures[:3]
    assert served[0][1] == "v1" and served[-1][1] == "v2"
    # Every request that started once setVModel had returned went to the new target.
    assert {name for started, name in served if started >= switched_at} == {"v2"}


@pytest.mark.parametrize("capacity", [4 * TEN_TINY], indirect=True)  # no evictions: every load is a first load
async def test_two_routers_on_one_etcd_never_load_a_model_twice(
        etcd_server, mesh_name, router: RouterServer, client: Client, runtimes, model_files) -> None:
    second = await start_router(etcd_server, mesh_name, len(runtimes))
    other = Client(second.endpoint)
    try:
        files = model_files[:20]
        ids = await client.register_all(files, prefix="shared")
        # The registrations went through the first router: the second must have them too.
        await second.mirror.wait_for(await router.store.revision(), timeout_s=30)
        await asyncio.gather(*(c.infer(mid, spec) for mid, (spec, _) in zip(ids, files)
                               for c in (client, other) for _ in range(3)))
        assert successful_loads(runtimes, router) == len(ids)
        assert sum(len(c) for c in router.mirror.copies.values()) == len(ids)
    finally:
        await other.channel.close()
        await second.stop(0)


async def test_runtime_killed_under_traffic_requests_retry_and_its_copies_vanish(
        client: Client, router: RouterServer, runtimes, model_files) -> None:
    files = model_files[:12]
    ids = await client.register_all(files)
    for mid, (spec, _) in zip(ids, files):
        await client.infer(mid, spec)
    victim = max(runtimes, key=lambda p: sum(1 for c in router.mirror.copies.values() if p.instance_id in c))
    failures: list[BaseException] = []
    done = 0

    async def traffic(offset: int) -> None:
        nonlocal done
        for k in range(40):
            mid, (spec, _) = ids[(offset + k) % len(ids)], files[(offset + k) % len(files)]
            try:
                name, ok = await client.infer(mid, spec)
                assert name == mid and ok
                done += 1
            except grpc.aio.AioRpcError as e:
                failures.append(e)

    tasks = [asyncio.create_task(traffic(i * 3)) for i in range(4)]
    await asyncio.sleep(0.2)
    victim.kill()
    await asyncio.gather(*tasks)
    assert not failures, [f"{e.code()}: {e.details()}" for e in failures[:3]]
    assert done == 160
    deadline = asyncio.get_running_loop().time() + 30
    while victim.instance_id in router.mirror.instances:  # the lease (3 s) expires, and with it the copies
        assert asyncio.get_running_loop().time() < deadline, f"{victim.instance_id} never left the mirror"
        await asyncio.sleep(0.1)
    for mid in ids:
        st = await client.mesh.getModelStatus(mm.GetStatusRequest(modelId=mid))
        assert victim.instance_id not in [c.location for c in st.modelCopyInfos]
