"""KServe resources end to end: real etcd, moto S3, runtime processes, the router, the CLI.

ONNX models over gRPC (KServe V2 by vmodel name): apply an InferenceService, infer,
re-apply (nothing changes), change its storageUri under traffic (a transition, no
failed request), delete it; a ServingRuntime pins placement to labelled runtimes;
a format nothing supports is FailedToLoad / NoSupportingRuntime; a restarted router
still knows every resource. Then the seed's sklearn-iris over S3 and REST (curl).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from load_tests.storage_servers import MotoS3
from tritonclient.grpc import service_pb2 as v2
from tritonclient.grpc import service_pb2_grpc as v2_grpc

from mesh import modelgen
from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.proto.mmesh import model_mesh_pb2_grpc as mm_grpc
from router.server import RouterServer
from tests.procs import ROOT, RuntimeProc, start_runtime
from tests.test_e2e import start_router

BUCKET = "models"
REST_URL = "http://127.0.0.1:8008"
SPECS = {name: modelgen.spec_for_bytes(70_000, seed=i) for i, name in enumerate(("a", "b", "c"))}

ISVC = """
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: {name}
  namespace: ml-serving
spec:
  predictor:
{extra}    model:
      modelFormat:
        name: {fmt}
{runtime}      storageUri: "s3://models/{obj}"
"""

TRITON_RUNTIME = (ROOT / "examples" / "kserve" / "triton-runtime.yaml").read_text()


def isvc_yaml(name: str, obj: str, *, fmt: str = "onnx", runtime: str = "", extra: str = "") -> str:
    return ISVC.format(name=name, obj=obj, fmt=fmt, extra=extra,
                       runtime=f"      runtime: {runtime}\n" if runtime else "")


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path_factory.mktemp("moto")).start()
    admin = server.admin()
    admin.create_bucket(Bucket=BUCKET)
    root = tmp_path_factory.mktemp("onnx")
    for name, spec in SPECS.items():
        path = modelgen.write_onnx_mlp(spec, root / f"{name}.onnx")
        admin.upload_file(str(path), BUCKET, f"{name}.onnx")
    yield server
    server.stop()


@pytest.fixture
def storage_config(s3: MotoS3, tmp_path: Path) -> Path:
    path = tmp_path / "storage-config.json"
    path.write_text(json.dumps({"default": s3.storage_entry()}))  # no storage.key: the default entry
    return path


def runtimes_for(etcd: str, mesh: str, config: Path, labels: list[str]) -> list[RuntimeProc]:
    env = {"MESHSERVE_MODEL_TYPES": "onnx", "MESHSERVE_LEASE_TTL_S": "3"}
    out = []
    for i, label in enumerate(labels):
        extra = ["--instance-id", f"rt{i}", "--storage-config", str(config)] + (["--labels", label] if label else [])
        out.append(start_runtime(etcd, mesh, capacity=10**8, env=env, extra_args=extra))
    return out


@pytest.fixture
def runtimes(etcd_server, mesh_name, storage_config) -> Iterator[list[RuntimeProc]]:
    procs = runtimes_for(etcd_server.endpoint, mesh_name, storage_config, ["", "runtime=triton-runtime"])
    yield procs
    for p in procs:
        p.kill()


@pytest.fixture
async def router(etcd_server, mesh_name, runtimes) -> AsyncIterator[RouterServer]:
    r = await start_router(etcd_server, mesh_name, len(runtimes), public_rest_url=REST_URL)
    yield r
    await r.stop(0)


async def cli(router: RouterServer, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``meshserve ARGS --router ...`` in a thread (the router runs on this event loop)."""
    cmd = [sys.executable, "-m", "mesh.cli", *args, "--router", router.endpoint]
    return await asyncio.to_thread(subprocess.run, cmd, input=stdin, capture_output=True, text=True, cwd=ROOT,
                                   timeout=120)


async def get_isvc(router: RouterServer, name: str) -> dict[str, Any]:
    out = await cli(router, "get", "isvc", name, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def ready(obj: dict[str, Any]) -> str:
    return next(c["status"] for c in obj["status"]["conditions"] if c["type"] == "Ready")


async def wait_for(router: RouterServer, name: str, pred: Any, what: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        obj = await get_isvc(router, name)
        if pred(obj):
            return obj
        assert asyncio.get_running_loop().time() < deadline, f"{what}: {json.dumps(obj['status'], indent=1)}"
        await asyncio.sleep(0.2)


class V2:
    def __init__(self, endpoint: str) -> None:
        self.channel = grpc.aio.insecure_channel(endpoint)
        self.stub = v2_grpc.GRPCInferenceServiceStub(self.channel)

    async def infer(self, name: str, seed: int = 1) -> str:
        """Which of the SPECS models answered (by its outputs)."""
        x = modelgen.sample_input(SPECS["a"], batch=2, seed=seed).astype(np.float32)
        req = v2.ModelInferRequest(model_name=name)
        req.inputs.add(name="INPUT0", datatype="FP32", shape=list(x.shape))
        req.raw_input_contents.append(x.tobytes())
        resp = await self.stub.ModelInfer(req, timeout=60)
        out = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(list(resp.outputs[0].shape))
        for which, spec in SPECS.items():
            if np.allclose(out, modelgen.reference_output(spec, x), rtol=1e-4, atol=1e-5):
                return which
        raise AssertionError("the answer matches none of the models")


@pytest.fixture
async def client(router: RouterServer) -> AsyncIterator[V2]:
    c = V2(router.endpoint)
    yield c
    await c.channel.close()


async def test_apply_infer_reapply_transition_under_traffic_delete(router: RouterServer, client: V2,
                                                                   tmp_path: Path) -> None:
    manifest = tmp_path / "m1.yaml"
    manifest.write_text(isvc_yaml("m1", "a.onnx", extra="    canaryTrafficPercent: 20\n"))
    out = await cli(router, "apply", "-f", str(manifest))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "inferenceservice.serving.kserve.io/m1 created"
    assert "Warning" not in out.stderr  # a first canary has nothing to split with: all traffic to it

    assert await client.infer("m1") == "a"
    obj = await wait_for(router, "m1", lambda o: o["status"]["modelStatus"]["states"]["activeModelState"] == "Loaded",
                         "m1 loaded")
    assert ready(obj) == "True"
    assert obj["status"]["url"] == f"grpc://{router.endpoint}"
    assert obj["status"]["components"]["predictor"]["restUrl"] == REST_URL
    assert obj["status"]["modelStatus"]["copies"] == {"failedCopies": 0, "totalCopies": 1}
    first = router.mirror.vmodels["m1"].active_model
    assert first.startswith("m1__isvc-")

    # The same file again changes nothing in the registry.
    before = (await router.registry.get_resource("InferenceService", "m1"), await router.registry.get_vmodel("m1"))
    out = await cli(router, "apply", "-f", "-", stdin=manifest.read_text())
    assert out.returncode == 0 and out.stdout.strip().endswith("m1 unchanged"), out
    after = (await router.registry.get_resource("InferenceService", "m1"), await router.registry.get_vmodel("m1"))
    assert [v.mod_revision for v in before if v] == [v.mod_revision for v in after if v] and None not in after

    # A changed storageUri moves the vmodel while requests keep coming: none fails.
    answers: list[str] = []
    failures: list[BaseException] = []
    stop = asyncio.Event()

    async def traffic(seed: int) -> None:
        while not stop.is_set():
            try:
                answers.append(await client.infer("m1", seed))
            except Exception as e:  # noqa: BLE001 - counted, asserted below
                failures.append(e)

    senders = [asyncio.create_task(traffic(s)) for s in (1, 2)]
    try:
        while len(answers) < 10:
            await asyncio.sleep(0.01)
        manifest.write_text(isvc_yaml("m1", "b.onnx"))
        out = await cli(router, "apply", "-f", str(manifest))
        assert out.returncode == 0 and out.stdout.strip().endswith("m1 configured"), out
        await wait_for(router, "m1", lambda o: o["status"]["modelStatus"]["transitionStatus"] == "UpToDate"
                       and router.mirror.vmodels["m1"].active_model != first, "transition to b")
        seen = len(answers)
        while len(answers) < seen + 10:
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.gather(*senders)
    assert not failures, failures[:3]
    assert answers[0] == "a" and answers[-1] == "b" and set(answers) == {"a", "b"}
    switched = answers.index("b")
    assert all(a == "b" for a in answers[switched + 2:])  # two senders: at most one late "a" in flight
    assert first not in router.mirror.models  # autoDeleteTargetModel: the old model went with the move
    obj = await get_isvc(router, "m1")
    assert obj["metadata"]["generation"] == 2 and ready(obj) == "True"

    # A spec whose model cannot load blocks the transition; the old model keeps serving.
    good = router.mirror.vmodels["m1"].active_model
    manifest.write_text(isvc_yaml("m1", "missing.onnx"))
    assert (await cli(router, "apply", "-f", str(manifest))).returncode == 0
    obj = await wait_for(router, "m1", lambda o: o["status"]["modelStatus"]["transitionStatus"] == "BlockedByFailedLoad",
                         "blocked transition")
    ms = obj["status"]["modelStatus"]
    assert ms["states"]["activeModelState"] == "Loaded" and ms["lastFailureInfo"]["reason"] == "ModelLoadFailed"
    assert "missing.onnx" in ms["lastFailureInfo"]["message"] and ready(obj) == "True"
    broken = ms["lastFailureInfo"]["modelRevisionName"]
    assert await client.infer("m1") == "b"
    manifest.write_text(isvc_yaml("m1", "b.onnx"))  # back to the spec that works
    assert (await cli(router, "apply", "-f", str(manifest))).returncode == 0
    obj = await get_isvc(router, "m1")
    assert obj["status"]["modelStatus"]["transitionStatus"] == "UpToDate" and "lastFailureInfo" not in obj["status"]["modelStatus"]
    assert router.mirror.vmodels["m1"].active_model == good and broken not in router.mirror.models

    # A canary: 30 % to the new spec, the rolled-out model keeps the rest, until promoted.
    manifest.write_text(isvc_yaml("m1", "c.onnx", extra="    canaryTrafficPercent: 30\n"))
    assert (await cli(router, "apply", "-f", str(manifest))).returncode == 0
    obj = await wait_for(router, "m1", lambda o: len(o["status"]["components"]["predictor"]["traffic"]) == 2,
                         "canary split live")
    shares = {t["percent"]: t["latestRevision"] for t in obj["status"]["components"]["predictor"]["traffic"]}
    assert shares == {70: False, 30: True}
    canaried = [await client.infer("m1", seed) for seed in range(60)]
    assert {"b", "c"} == set(canaried), canaried  # both serve (30 % of 60: P(no "c") < 1e-9)
    manifest.write_text(isvc_yaml("m1", "c.onnx"))  # promote
    out = await cli(router, "apply", "-f", str(manifest))
    assert out.returncode == 0 and out.stdout.strip().endswith("configured"), out
    obj = await wait_for(router, "m1", lambda o: o["status"]["modelStatus"]["transitionStatus"] == "UpToDate"
                         and len(o["status"]["components"]["predictor"]["traffic"]) == 1, "promoted")
    assert obj["status"]["components"]["predictor"]["traffic"][0]["latestRevision"] is True
    assert {await client.infer("m1", seed) for seed in range(10)} == {"c"}
    assert good not in router.mirror.models  # the rolled-out model went with the promotion

    # Delete: the vmodel and its model are gone, and so is the resource.
    current = router.mirror.vmodels["m1"].active_model
    out = await cli(router, "delete", "-f", str(manifest))
    assert out.returncode == 0 and out.stdout.strip().endswith("m1 deleted"), out
    assert "m1" not in router.mirror.vmodels and current not in router.mirror.models
    assert not router.mirror.copies.get(current)
    out = await cli(router, "get", "isvc", "m1")
    assert out.returncode == 1 and "NOT_FOUND" in out.stderr and "m1" in out.stderr
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.infer("m1")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    out = await cli(router, "delete", "isvc", "m1")
    assert out.returncode == 1 and "not applied" in out.stderr


async def test_invalid_manifests_are_refused_with_the_field_named(router: RouterServer, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(isvc_yaml("good", "a.onnx") + "---\n" + isvc_yaml("bad", "a.onnx").replace(
        '      storageUri: "s3://models/a.onnx"\n', ""))
    out = await cli(router, "apply", "-f", str(bad))
    assert out.returncode == 1
    assert "INVALID_ARGUMENT" in out.stderr and "spec.predictor.model.storageUri" in out.stderr
    assert "nothing was applied" in out.stderr and not router.mirror.resources
    bad.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    out = await cli(router, "apply", "-f", str(bad))
    assert out.returncode == 1 and "kind 'ConfigMap' is not supported" in out.stderr

    # A vmodel of that name that no InferenceService owns is not taken over.
    async with grpc.aio.insecure_channel(router.endpoint) as ch:
        stub = mm_grpc.ModelMeshStub(ch)
        await stub.setVModel(mm.SetVModelRequest(vModelId="taken", targetModelId="plain", owner="someone",
                                                 modelInfo=mm.ModelInfo(type="onnx", path="s3://models/a.onnx")))
    bad.write_text(isvc_yaml("good", "a.onnx") + "---\n" + isvc_yaml("taken", "a.onnx"))
    out = await cli(router, "apply", "-f", str(bad))
    assert out.returncode == 1 and "FAILED_PRECONDITION" in out.stderr and "'someone'" in out.stderr
    assert not router.mirror.resources and router.mirror.vmodels["taken"].owner == "someone"
    # One mesh is one namespace: the same name from another namespace is refused.
    assert (await cli(router, "apply", "-f", "-", stdin=isvc_yaml("good", "a.onnx"))).returncode == 0
    other = isvc_yaml("good", "b.onnx").replace("namespace: ml-serving", "namespace: team-b")
    out = await cli(router, "apply", "-f", "-", stdin=other)
    assert out.returncode == 1 and "ALREADY_EXISTS" in out.stderr and "ml-serving" in out.stderr


async def test_serving_runtime_places_on_labelled_runtimes_and_survives_a_router_restart(
        etcd_server, mesh_name, runtimes: list[RuntimeProc], tmp_path: Path) -> None:
    manifest = tmp_path / "all.yaml"
    router = await start_router(etcd_server, mesh_name, len(runtimes))
    client = V2(router.endpoint)
    try:
        await _placement(router, client, runtimes, manifest)
    finally:
        await client.channel.close()
        await router.stop(0)
    await _after_restart(etcd_server, mesh_name, runtimes, manifest)


async def _placement(router: RouterServer, client: V2, runtimes: list[RuntimeProc], manifest: Path) -> None:
    manifest.write_text("\n---\n".join([
        TRITON_RUNTIME,
        isvc_yaml("pinned", "c.onnx", runtime="triton-runtime"),
        isvc_yaml("iris-like", "a.onnx", fmt="sklearn"),
        isvc_yaml("unknown-rt", "a.onnx", runtime="no-such-runtime"),
    ]))
    out = await cli(router, "apply", "-f", str(manifest))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "servingruntime.serving.kserve.io/triton-runtime created"
    assert "spec.containers is ignored" in out.stderr

    labelled = runtimes[1].instance_id
    for _ in range(3):  # every load of the pinned model lands on the labelled runtime
        assert await client.infer("pinned") == "c"
        model = router.mirror.vmodels["pinned"].active_model
        assert set(router.mirror.copies[model]) == {labelled}
    pinned = await get_isvc(router, "pinned")
    assert ready(pinned) == "True"

    # sklearn: no ServingRuntime lists it and no runtime loads it.
    iris = await wait_for(router, "iris-like", lambda o: "lastFailureInfo" in o["status"]["modelStatus"],
                          "iris-like failure")
    ms = iris["status"]["modelStatus"]
    assert ms["states"]["activeModelState"] == "FailedToLoad" and ready(iris) == "False"
    assert ms["lastFailureInfo"]["reason"] == "NoSupportingRuntime"
    unknown = await get_isvc(router, "unknown-rt")
    assert unknown["status"]["modelStatus"]["lastFailureInfo"]["reason"] == "RuntimeNotRecognized"

    table = await cli(router, "get", "isvc")
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "URL", "READY"] and len(lines) == 4
    runtimes_out = await cli(router, "get", "servingruntime")
    assert "triton-runtime" in runtimes_out.stdout and "onnx:1" in runtimes_out.stdout



async def _after_restart(etcd_server, mesh_name: str, runtimes: list[RuntimeProc], manifest: Path) -> None:
    """A new router (same etcd) knows every resource and serves the vmodel."""
    second = await start_router(etcd_server, mesh_name, len(runtimes))
    try:
        assert {n for _, n in second.mirror.resources} == {"triton-runtime", "pinned", "iris-like", "unknown-rt"}
        c2 = V2(second.endpoint)
        try:
            assert await c2.infer("pinned") == "c"
        finally:
            await c2.channel.close()
        assert ready(await get_isvc(second, "pinned")) == "True"
        out = await cli(second, "apply", "-f", str(manifest))
        assert out.returncode == 0 and all(line.endswith("unchanged") for line in out.stdout.splitlines()), out
        out = await cli(second, "delete", "-f", str(manifest))
        assert out.returncode == 0 and len(out.stdout.splitlines()) == 4
        assert not second.mirror.resources and not second.mirror.vmodels and not second.mirror.models
    finally:
        await second.stop(0)


IRIS_INSTANCES = {"instances": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]}


def curl_predict(rest: str, name: str) -> tuple[int, Any]:
    """``curl -s -d @body http://REST/v1/models/NAME:predict``: HTTP status and the JSON body."""
    out = subprocess.run(["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-H", "Content-Type: application/json",
                          "-d", json.dumps(IRIS_INSTANCES), f"http://{rest}/v1/models/{name}:predict"],
                         capture_output=True, text=True, timeout=60)
    body, _, code = out.stdout.rpartition("\n")
    return int(code or 0), json.loads(body) if body.strip() else None


async def test_seed_sklearn_iris_over_rest(etcd_server, mesh_name, s3: MotoS3, storage_config: Path,
                                           tmp_path: Path) -> None:
    """The issue's must-show: the seed's sklearn-iris from S3, curl :predict, get, a storageUri move
    under traffic with no failed request, delete."""
    pytest.importorskip("router.rest.app", reason="needs the REST front door (issue 11)")
    pytest.importorskip("mesh.runtime.backends.sklearn", reason="needs the sklearn backend (issue 12)")
    tabular = pytest.importorskip("mesh.modelgen_tabular", reason="needs the iris model generator (issue 12)")
    for version, proba in (("1.0", False), ("2.0", True)):
        folder = tmp_path / version
        tabular.write_sklearn_iris(folder, proba=proba)
        s3.admin().upload_file(str(folder / "model.joblib"), BUCKET, f"sklearn/{version}/model/model.joblib")
    seed = (ROOT / "examples" / "kserve" / "sklearn-iris.yaml").read_text()
    manifest = tmp_path / "sklearn-iris.yaml"
    manifest.write_text(seed.replace("gs://kfserving-examples/models/sklearn/1.0/model",
                                     "s3://models/sklearn/1.0/model"))
    env = {"MESHSERVE_MODEL_TYPES": "sklearn", "MESHSERVE_LEASE_TTL_S": "3"}
    rt = start_runtime(etcd_server.endpoint, mesh_name, capacity=10**8, env=env,
                       extra_args=["--storage-config", str(storage_config), "--allow-pickle"])
    router = await start_router(etcd_server, mesh_name, 1, rest_listen="127.0.0.1:0")
    try:
        rest = router.rest_endpoint
        out = await cli(router, "apply", "-f", str(manifest))
        assert out.returncode == 0 and out.stdout.strip().endswith("sklearn-iris created"), out
        assert await asyncio.to_thread(curl_predict, rest, "sklearn-iris") == (200, {"predictions": [1, 1]})
        obj = await wait_for(router, "sklearn-iris", lambda o: ready(o) == "True"
                             and o["status"]["modelStatus"]["states"]["activeModelState"] == "Loaded", "iris ready")
        predictor = obj["status"]["components"]["predictor"]
        assert {k: predictor[k] for k in ("url", "grpcUrl", "restUrl")} == {
            "url": f"grpc://{router.endpoint}", "grpcUrl": f"grpc://{router.endpoint}", "restUrl": f"http://{rest}"}
        text = await cli(router, "get", "isvc", "sklearn-iris")
        assert "Ready:       True" in text.stdout and f"http://{rest}" in text.stdout, text.stdout
        first = router.mirror.vmodels["sklearn-iris"].active_model

        # Another storageUri under traffic: a transition, and not one failed request.
        results: list[tuple[int, Any]] = []
        stop = asyncio.Event()

        async def traffic() -> None:
            while not stop.is_set():
                results.append(await asyncio.to_thread(curl_predict, rest, "sklearn-iris"))

        sender = asyncio.create_task(traffic())
        try:
            manifest.write_text(manifest.read_text().replace("sklearn/1.0/model", "sklearn/2.0/model"))
            out = await cli(router, "apply", "-f", str(manifest))
            assert out.returncode == 0 and out.stdout.strip().endswith("configured"), out
            await wait_for(router, "sklearn-iris", lambda o: o["status"]["modelStatus"]["transitionStatus"]
                           == "UpToDate" and router.mirror.vmodels["sklearn-iris"].active_model != first, "move")
            seen = len(results)
            while len(results) < seen + 3:
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await sender
        assert results and all(r == (200, {"predictions": [1, 1]}) for r in results), results[:5]
        assert first not in router.mirror.models

        out = await cli(router, "delete", "isvc", "sklearn-iris")
        assert out.returncode == 0 and out.stdout.strip().endswith("deleted"), out
        assert "sklearn-iris" not in router.mirror.vmodels and not router.mirror.models
        code, body = await asyncio.to_thread(curl_predict, rest, "sklearn-iris")
        assert code == 404 and "sklearn-iris" in json.dumps(body)
    finally:
        await router.stop(0)
        rt.kill()
