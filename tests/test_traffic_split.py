"""Weighted traffic splits of a vmodel through a real mesh (etcd, runtime processes, router)."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc import service_pb2 as v2
from tritonclient.grpc import service_pb2_grpc as v2_grpc

from mesh import modelgen
from mesh.proto.meshserve.v1 import admin_pb2 as adm
from mesh.proto.meshserve.v1 import admin_pb2_grpc as adm_grpc
from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.proto.mmesh import model_mesh_pb2_grpc as mm_grpc
from router.server import RouterServer
from tests.procs import ROOT, RuntimeProc
from tests.runtime_helpers import scrape
from tests.test_e2e import start_router, start_runtimes

SPEC = modelgen.spec_for_bytes(70_000, seed=0)


def binomial_bounds(n: int, p: float, alpha: float = 0.001) -> tuple[int, int]:
    """The central interval holding all but ``alpha`` of Binomial(n, p) (exact tails)."""
    pmf = [math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                    + k * math.log(p) + (n - k) * math.log(1 - p)) for k in range(n + 1)]
    lo, acc = 0, 0.0
    while acc + pmf[lo] <= alpha / 2:
        acc += pmf[lo]
        lo += 1
    hi, acc = n, 0.0
    while acc + pmf[hi] <= alpha / 2:
        acc += pmf[hi]
        hi -= 1
    return lo, hi


@pytest.fixture
def runtimes(etcd_server, mesh_name) -> Iterator[list[RuntimeProc]]:
    procs = start_runtimes(etcd_server.endpoint, mesh_name, 2, 4_000_000)
    yield procs
    for p in procs:
        if p.running:
            p.kill()


@pytest.fixture
async def router(etcd_server, mesh_name, runtimes) -> AsyncIterator[RouterServer]:
    r = await start_router(etcd_server, mesh_name, len(runtimes), metrics_listen="127.0.0.1:0", split_seed=20261201)
    yield r
    await r.stop(0)


class Mesh:
    def __init__(self, router: RouterServer, model_path: Path) -> None:
        self.model_path = model_path
        self.channel = grpc.aio.insecure_channel(router.endpoint)
        self.mm = mm_grpc.ModelMeshStub(self.channel)
        self.admin = adm_grpc.MeshAdminStub(self.channel)
        self.v2 = v2_grpc.GRPCInferenceServiceStub(self.channel)

    async def register(self, *ids: str) -> None:
        for mid in ids:
            await self.mm.registerModel(mm.RegisterModelRequest(
                modelId=mid, modelInfo=mm.ModelInfo(type="onnx", path=str(self.model_path))))

    async def split(self, vid: str, sync: bool = True, **weights: int) -> mm.VModelStatusInfo:
        req = adm.SetTrafficSplitRequest(vmodel_id=vid, sync=sync)
        for model_id, w in weights.items():
            req.targets.add(model_id=model_id, weight=w)
        return await self.admin.SetTrafficSplit(req, timeout=60)

    async def infer(self, vid: str, key: str | None = None) -> str:
        x = modelgen.sample_input(SPEC, batch=1)
        req = v2.ModelInferRequest(model_name=vid)
        req.inputs.add(name="INPUT0", datatype="FP32", shape=list(x.shape))
        req.raw_input_contents.append(x.tobytes())
        md = (("mm-split-key", key),) if key else ()
        return (await self.v2.ModelInfer(req, metadata=md, timeout=30)).model_name

    async def infer_many(self, vid: str, n: int, callers: int = 8) -> list[str]:
        names: list[str] = []

        async def caller(count: int) -> None:
            for _ in range(count):
                names.append(await self.infer(vid))

        await asyncio.gather(*(caller(n // callers + (i < n % callers)) for i in range(callers)))
        return names


@pytest.fixture
async def mesh(router: RouterServer, tmp_path: Path) -> AsyncIterator[Mesh]:
    m = Mesh(router, modelgen.write_onnx_mlp(SPEC, tmp_path / "m.onnx"))
    yield m
    await m.channel.close()


async def test_a_90_10_split_lands_within_binomial_bounds_and_counts_per_target(
        mesh: Mesh, router: RouterServer) -> None:
    await mesh.register("blue", "green")
    st = await mesh.split("prod", blue=90, green=10)
    assert st.status == mm.VModelStatusInfo.DEFINED
    assert [(t.modelId, t.weight, t.live) for t in st.trafficSplit] == [("blue", 90, True), ("green", 10, True)]
    got = Counter(await mesh.infer_many("prod", 2000))
    lo, hi = binomial_bounds(2000, 0.1)
    assert set(got) == {"blue", "green"} and lo <= got["green"] <= hi, (got, lo, hi)
    samples = scrape(router.metrics.endpoint)
    for model_id in ("blue", "green"):
        assert samples[f'meshserve_split_requests_total{{model="{model_id}",vmodel="prod"}}'] == got[model_id]
    # getVModelStatus shows the split too (a meshserve extension field).
    st = await mesh.mm.getVModelStatus(mm.GetVModelStatusRequest(vModelId="prod"))
    assert {t.modelId: t.weight for t in st.trafficSplit} == {"blue": 90, "green": 10}


async def test_targets_load_before_traffic_and_a_live_change_takes_effect_with_no_failure(
        mesh: Mesh, router: RouterServer) -> None:
    await mesh.register("v1", "v2")
    await mesh.mm.setVModel(mm.SetVModelRequest(vModelId="svc", targetModelId="v1", sync=True))
    misses_before = scrape(router.metrics.endpoint)["meshserve_cache_misses_total"]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    served: list[tuple[float, str]] = []
    failures: list[BaseException] = []

    async def traffic() -> None:
        while not stop.is_set():
            started = loop.time()
            try:
                served.append((started, await mesh.infer("svc")))
            except grpc.aio.AioRpcError as e:
                failures.append(e)

    tasks = [asyncio.create_task(traffic()) for _ in range(4)]
    pending = await mesh.split("svc", sync=False, v1=90, v2=10)  # v2 is not loaded yet
    assert pending.status in (mm.VModelStatusInfo.TRANSITIONING, mm.VModelStatusInfo.DEFINED)
    for _ in range(400):
        st = await mesh.mm.getVModelStatus(mm.GetVModelStatusRequest(vModelId="svc"))
        if st.status == mm.VModelStatusInfo.DEFINED:
            break
        await asyncio.sleep(0.025)
    assert [t.live for t in st.trafficSplit] == [True, True]
    # No request waited for a load: v2 was loaded before it got any traffic.
    assert scrape(router.metrics.endpoint)["meshserve_cache_misses_total"] == misses_before
    await mesh.split("svc", v1=50, v2=50)
    changed_at = loop.time()
    while sum(1 for t, _ in served if t >= changed_at + 1.0) < 600:
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*tasks)
    assert not failures, [f"{e.code()}: {e.details()}" for e in failures[:3]]
    after = Counter(name for t, name in served if t >= changed_at + 1.0)
    lo, hi = binomial_bounds(sum(after.values()), 0.5)
    assert lo <= after["v2"] <= hi, after


async def test_sticky_keys_always_reach_the_same_target(mesh: Mesh) -> None:
    await mesh.register("a", "b")
    await mesh.split("sticky", a=50, b=50)
    seen: dict[str, set[str]] = {}
    for key in (f"user-{i}" for i in range(40)):
        for _ in range(8):
            seen.setdefault(key, set()).add(await mesh.infer("sticky", key=key))
    assert all(len(targets) == 1 for targets in seen.values()), seen
    assert {next(iter(t)) for t in seen.values()} == {"a", "b"}  # keys spread over both


async def test_bad_splits_are_refused_and_setvmodel_ends_a_split(mesh: Mesh) -> None:
    await mesh.register("x", "y")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.split("bad", x=50, nope=50)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "'nope'" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.split("bad", x=0, y=0)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "add up to 0" in err.value.details()
    # Blue-green: the idle side keeps weight 0, no traffic, and stays in the split.
    st = await mesh.split("bg", x=100, y=0)
    assert [(t.modelId, t.weight) for t in st.trafficSplit] == [("x", 100), ("y", 0)]
    assert {await mesh.infer("bg") for _ in range(20)} == {"x"}
    await mesh.split("one", x=70, y=30)
    st = await mesh.mm.setVModel(mm.SetVModelRequest(vModelId="one", targetModelId="y", force=True))
    assert st.activeModelId == "y" and not st.trafficSplit
    assert {await mesh.infer("one") for _ in range(20)} == {"y"}


async def test_the_cli_sets_and_shows_a_split(mesh: Mesh, router: RouterServer) -> None:
    await mesh.register("c1", "c2")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mesh.cli", *args, "--router", router.endpoint],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)

    out = await asyncio.to_thread(cli, "vmodel", "split", "cli-v", "c1=75", "c2=25")
    assert out.returncode == 0, out.stderr
    assert "vmodel cli-v: DEFINED" in out.stdout and "split c2: weight 25 (25.0 %), LOADED" in out.stdout
    shown = await asyncio.to_thread(cli, "status", "--vmodel", "cli-v")
    assert "split c1: weight 75 (75.0 %)" in shown.stdout, shown.stdout
    bad = await asyncio.to_thread(cli, "vmodel", "split", "cli-v", "c1")
    assert bad.returncode == 2 and "not MODEL=WEIGHT" in bad.stderr
