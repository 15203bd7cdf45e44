"""The REST front door end to end: a real `meshserve router` process with
`--rest-listen`, real runtime processes (ONNX and TorchScript), real etcd, and
real HTTP clients (aiohttp, tritonclient.http sync and aio).

One mesh for the module (processes are slow to start on a shared machine);
every test uses its own model ids.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as v2
from tritonclient.grpc import service_pb2_grpc as v2_grpc

from mesh import modelgen
from mesh.etcd_server import LocalEtcd, free_port
from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.proto.mmesh import model_mesh_pb2_grpc as mm_grpc
from tests.procs import RouterProc, RuntimeProc, start_router, start_runtime
from tests.runtime_helpers import scrape

SPEC = modelgen.MlpSpec(in_dim=16, hidden=32, out_dim=4, seed=3)
TS_SPEC = modelgen.MlpSpec(in_dim=8, hidden=24, out_dim=3, seed=5)
BODY_LIMIT = 1 << 20  # the router's max_message_bytes here: 1 MiB


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("rest-models")
    corrupt = d / "corrupt.onnx"
    corrupt.write_bytes(b"this is not an onnx model")
    return {
        "onnx": modelgen.write_onnx_mlp(SPEC, d / "mlp.onnx"),
        "pytorch": modelgen.write_torchscript_mlp(TS_SPEC, d / "mlp.pt"),
        "identity": modelgen.write_onnx_identity(d / "identity.onnx"),
        "corrupt": corrupt,
    }


class Mesh:
    def __init__(self, router: RouterProc, metrics: str, runtimes: list[RuntimeProc]) -> None:
        self.router = router
        self.metrics = metrics
        self.runtimes = runtimes
        self.base = f"http://{router.rest_endpoint}"


@pytest.fixture(scope="module")
def mesh(etcd_server: LocalEtcd) -> Iterator[Mesh]:
    name = f"rest-{uuid.uuid4().hex[:8]}"
    env = {"MESHSERVE_MODEL_TYPES": "onnx,pytorch,sklearn"}
    # --allow-pickle: KServe's sklearn-iris is a joblib file.
    runtimes = [start_runtime(etcd_server.endpoint, name, capacity="64Mi", env=env,
                              extra_args=["--instance-id", f"rest-rt{i}", "--allow-pickle"]) for i in range(2)]
    metrics = f"127.0.0.1:{free_port()}"
    router = start_router(etcd_server.endpoint, name, extra_args=["--metrics-listen", metrics], env={
        "MESHSERVE_MAX_MESSAGE_BYTES": str(BODY_LIMIT), "MESHSERVE_MAX_LOAD_FAILURES": "1",
        "MESHSERVE_SCALE_INTERVAL_S": "3600"})
    yield Mesh(router, metrics, runtimes)
    for p in (router, *runtimes):
        assert p.terminate() == 0, p.log()[-3000:]


@pytest.fixture
async def http(mesh: Mesh) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(mesh.base, timeout=aiohttp.ClientTimeout(total=120)) as s:
        yield s


@pytest.fixture
async def grpc_mesh(mesh: Mesh) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(mesh.router.endpoint) as ch:
        yield ch


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def register(channel: grpc.aio.Channel, model_id: str, path: Path, type_: str = "onnx") -> None:
    await mm_grpc.ModelMeshStub(channel).registerModel(mm.RegisterModelRequest(
        modelId=model_id, modelInfo=mm.ModelInfo(type=type_, path=str(path))))


def url(model_id: str) -> str:
    return quote(model_id, safe="")


async def post(http: aiohttp.ClientSession, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(path, data=data, headers={"Content-Type": "application/json", **kw.pop("headers", {})},
                         **kw) as r:
        raw = await r.read()
        return r.status, json.loads(raw) if r.content_type == "application/json" else (raw, r.headers)


async def get(http: aiohttp.ClientSession, path: str) -> tuple[int, Any]:
    async with http.get(path) as r:
        return r.status, await r.json()


def reference(spec: modelgen.MlpSpec, x: np.ndarray) -> np.ndarray:
    return modelgen.reference_output(spec, x)


def assert_matches(got: Any, spec: modelgen.MlpSpec, x: np.ndarray) -> None:
    """``got`` (any nesting) is what the NumPy reference computes for ``x``."""
    want = reference(spec, x)
    np.testing.assert_allclose(np.asarray(got, np.float32).reshape(want.shape), want, rtol=1e-4, atol=1e-5)


async def new_model(channel: grpc.aio.Channel, files: dict[str, Path], kind: str, prefix: str) -> tuple[str, modelgen.MlpSpec]:
    """A freshly registered MLP of ``kind`` (onnx or pytorch) and its spec."""
    mid = unique(f"{prefix}-{kind}")
    await register(channel, mid, files[kind], kind)
    return mid, SPEC if kind == "onnx" else TS_SPEC


# -- KServe V1 --------------------------------------------------------------


async def test_kserve_sklearn_iris_request_works_unchanged(
        http: aiohttp.ClientSession, grpc_mesh: grpc.aio.Channel, tmp_path: Path) -> None:
    """The first request a KServe user tries (the issue's curl), byte for byte."""
    from mesh.modelgen_tabular import write_sklearn_iris

    iris = write_sklearn_iris(tmp_path / "sklearn-iris")
    await register(grpc_mesh, "sklearn-iris", iris.path, "sklearn")
    body = b'{"instances": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]}'
    async with http.post("/v1/models/sklearn-iris:predict", data=body,
                         headers={"Content-Type": "application/json"}) as r:
        assert r.status == 200 and r.content_type == "application/json"
        assert json.loads(await r.read()) == {"predictions": [1, 1]}


@pytest.mark.parametrize("kind", ["onnx", "pytorch"])
async def test_v1_predict_loads_the_model_on_first_request_and_matches_numpy(
        kind: str, http: aiohttp.ClientSession, grpc_mesh: grpc.aio.Channel, files: dict[str, Path]) -> None:
    mid, spec = await new_model(grpc_mesh, files, kind, "v1")
    assert await get(http, f"/v1/models/{url(mid)}") == (200, {"name": mid, "ready": False})
    x = modelgen.sample_input(spec, batch=3)
    status, body = await post(http, f"/v1/models/{url(mid)}:predict", {"instances": x.tolist()})
    assert status == 200, body
    assert_matches(body["predictions"], spec, x)
    assert await get(http, f"/v1/models/{url(mid)}") == (200, {"name": mid, "ready": True})
    # "inputs" as a list works like "instances"; as an object it is columns keyed by input name.
    for doc in ({"inputs": x.tolist()}, {"inputs": {"INPUT0": x.tolist()}}):
        status, again = await post(http, f"/v1/models/{url(mid)}:predict", doc)
        assert status == 200 and again == body
    status, listed = await get(http, "/v1/models")
    assert status == 200 and mid in listed["models"]


async def test_v1_with_several_inputs_and_outputs_uses_objects_keyed_by_name(
        http: aiohttp.ClientSession, grpc_mesh: grpc.aio.Channel, files: dict[str, Path]) -> None:
    mid = unique("v1-multi")
    await register(grpc_mesh, mid, files["identity"])
    rows = [{f"IN_{d}": [1, 0, 1, 1] if d == "BOOL" else [1, 2, 3, 4] for d in modelgen.IDENTITY_DTYPES}
            for _ in range(2)]
    status, body = await post(http, f"/v1/models/{url(mid)}:predict", {"instances": rows})
    assert status == 200, body
    assert len(body["predictions"]) == 2
    first = body["predictions"][0]
    assert first["OUT_FP32"] == [1.0, 2.0, 3.0, 4.0] and first["OUT_INT64"] == [1, 2, 3, 4]
    assert first["OUT_BOOL"] == [True, False, True, True]
    status, err = await post(http, f"/v1/models/{url(mid)}:predict", {"instances": [[1, 2, 3, 4]]})
    assert status == 400 and "instance must be an object keyed by input name" in err["error"]


# -- KServe V2 JSON and binary ----------------------------------------------


@pytest.mark.parametrize("kind", ["onnx", "pytorch"])
async def test_v2_json_flat_and_nested_data_match_numpy(
        kind: str, http: aiohttp.ClientSession, grpc_mesh: grpc.aio.Channel, files: dict[str, Path]) -> None:
    mid, spec = await new_model(grpc_mesh, files, kind, "v2")
    x = modelgen.sample_input(spec, batch=2)
    for data in (x.reshape(-1).tolist(), x.tolist()):
        status, body = await post(http, f"/v2/models/{url(mid)}/infer", {
            "id": "req-1", "inputs": [{"name": "INPUT0", "shape": list(x.shape), "datatype": "FP32", "data": data}]})
        assert status == 200, body
        assert body["model_name"] == mid and body["id"] == "req-1"
        (out,) = body["outputs"]
        assert out["name"] == "OUTPUT0" and out["datatype"] == "FP32" and out["shape"] == [2, spec.out_dim]
        assert_matches(out["data"], spec, x)
    status, meta = await get(http, f"/v2/models/{url(mid)}")
    assert status == 200 and meta["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, spec.in_dim]}]
    assert await get(http, f"/v2/models/{url(mid)}/versions/1/ready") == (200, {"name": mid, "ready": True})


@pytest.mark.parametrize("kind", ["onnx", "pytorch"])
async def test_v2_binary_extension_in_and_out(
        kind: str, http: aiohttp.ClientSession, grpc_mesh: grpc.aio.Channel, files: dict[str, Path]) -> None:
    mid, spec = await new_model(grpc_mesh, files, kind, "bin")
    x = modelgen.sample_input(spec, batch=4)
    head = json.dumps({"inputs": [{"name": "INPUT0", "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]}).encode()
    status, (raw, headers) = await post(http, f"/v2/models/{url(mid)}/infer", head + x.tobytes(),
                                        headers={"Inference-Header-Content-Length": str(len(head))})
    assert status == 200
    n = int(headers["Inference-Header-Content-Length"])
    doc = json.loads(raw[:n])
    (out,) = doc["outputs"]
    assert out["parameters"]["binary_data_size"] == len(raw) - n == 4 * 4 * spec.out_dim
    assert_matches(np.frombuffer(raw[n:], np.float32), spec, x)


async def test_large_batches_over_json_and_binary(
        http: aiohttp.ClientSession, grpc_mesh: grpc.aio.Channel, files: dict[str, Path]) -> None:
    """Over 256 KiB, bodies are decoded and encoded off the event loop: same answers."""
    mid, spec = await new_model(grpc_mesh, files, "onnx", "large")
    short = np.round(modelgen.sample_input(spec, batch=4096).astype(np.float64), 1)  # ~340 KB as JSON
    x = short.astype(np.float32)
    tensor = {"name": "INPUT0", "shape": list(x.shape), "datatype": "FP32"}
    status, body = await post(http, f"/v2/models/{url(mid)}/infer", {"inputs": [{**tensor, "data": short.tolist()}]})
    assert status == 200, body
    assert_matches(body["outputs"][0]["data"], spec, x)
    head = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}],
                       "parameters": {"binary_data_output": True}}).encode()
    status, (raw, headers) = await post(http, f"/v2/models/{url(mid)}/infer", head + x.astype(np.float32).tobytes(),
                                        headers={"Inference-Header-Content-Length": str(len(head))})
    assert status == 200
    assert_matches(np.frombuffer(raw[int(headers["Inference-Header-Content-Length"]):], np.float32), spec, x)


async def test_v2_json_round_trips_every_datatype_and_honours_requested_outputs(
        http: aiohttp.ClientSession, grpc_mesh: grpc.aio.Channel, files: dict[str, Path]) -> None:
    mid = unique("identity")
    await register(grpc_mesh, mid, files["identity"])
    values = {d: ([True, False, True, False] * 2 if d == "BOOL" else
                  [0.5, -1.25, 3.0, 4.5, 1, 2, 3, 4] if d.startswith("FP") else
                  [0, 1, 2, 127, 5, 6, 7, 8] if d.startswith(("INT", "UINT")) else None)
              for d in modelgen.IDENTITY_DTYPES}
    inputs = [{"name": f"IN_{d}", "shape": [2, 4], "datatype": d, "data": v} for d, v in values.items()]
    wanted = ["OUT_FP16", "OUT_UINT64", "OUT_BOOL"]
    status, body = await post(http, f"/v2/models/{url(mid)}/infer",
                              {"inputs": inputs, "outputs": [{"name": n} for n in wanted]})
    assert status == 200, body
    assert [o["name"] for o in body["outputs"]] == wanted
    for o in body["outputs"]:
        assert o["datatype"] == o["name"][4:] and o["shape"] == [2, 4] and o["data"] == values[o["name"][4:]]
    status, body = await post(http, f"/v2/models/{url(mid)}/infer", {"inputs": inputs})
    assert status == 200 and len(body["outputs"]) == len(values)
    assert all(o["data"] == values[o["datatype"]] for o in body["outputs"])


# -- tritonclient.http, unchanged ------------------------------------------


async def test_tritonclient_http_sync_with_its_defaults(
        mesh: Mesh, grpc_mesh: grpc.aio.Channel, files: dict[str, Path]) -> None:
    import tritonclient.http as httpclient

    mid = unique("tc-sync")
    await register(grpc_mesh, mid, files["onnx"])
    x = modelgen.sample_input(SPEC, batch=5)

    def run() -> tuple[Any, ...]:
        client = httpclient.InferenceServerClient(mesh.router.rest_endpoint)
        try:
            live, ready = client.is_server_live(), client.is_server_ready()
            before = client.is_model_ready(mid)
            inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)  # binary by default
            binary = client.infer(mid, [inp]).as_numpy("OUTPUT0")
            inp.set_data_from_numpy(x, binary_data=False)
            as_json = client.infer(mid, [inp], outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=False)],
                                   request_id="r7")
            inp.set_data_from_numpy(x)
            gzipped = client.infer(mid, [inp], request_compression_algorithm="gzip",
                                   response_compression_algorithm="deflate").as_numpy("OUTPUT0")
            assert_matches(gzipped, SPEC, x)
            meta = client.get_model_metadata(mid)
            after = client.is_model_ready(mid)
            server = client.get_server_metadata()
            return live, ready, before, binary, as_json.as_numpy("OUTPUT0"), as_json.get_response()["id"], meta, after, server
        finally:
            client.close()

    live, ready, before, binary, as_json, rid, meta, after, server = await asyncio.to_thread(run)
    assert live and ready and not before and after and rid == "r7"
    assert_matches(binary, SPEC, x)
    assert_matches(as_json, SPEC, x)
    assert meta["name"] == mid and meta["outputs"][0]["name"] == "OUTPUT0"
    assert server["name"] == "meshserve" and "binary_tensor_data" in server["extensions"]


async def test_tritonclient_http_aio_and_its_errors(
        mesh: Mesh, grpc_mesh: grpc.aio.Channel, files: dict[str, Path]) -> None:
    import tritonclient.http.aio as aioclient
    from tritonclient.utils import InferenceServerException

    mid = unique("tc-aio")
    await register(grpc_mesh, mid, files["pytorch"], "pytorch")
    x = modelgen.sample_input(TS_SPEC, batch=2)
    client = aioclient.InferenceServerClient(mesh.router.rest_endpoint)
    try:
        inp = aioclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        results = await asyncio.gather(*(client.infer(mid, [inp]) for _ in range(8)))
        for r in results:
            assert_matches(r.as_numpy("OUTPUT0"), TS_SPEC, x)
        assert await client.is_model_ready(mid)
        with pytest.raises(InferenceServerException) as err:
            await client.infer("no-such-model", [inp])
        assert err.value.message() == "no model or vmodel named 'no-such-model' is registered"
        bad = aioclient.InferInput("INPUT0", [2, 5], "FP32")
        bad.set_data_from_numpy(np.zeros((2, 5), np.float32))
        with pytest.raises(InferenceServerException) as err:
            await client.infer(mid, [bad])
        assert "expected shape [-1, 8]" in err.value.message()
    finally:
        await client.close()


# -- names --------------------------------------------------------------------


async def test_ids_with_slash_colon_and_at_percent_encoded_and_vmodels(
        http: aiohttp.ClientSession, grpc_mesh: grpc.aio.Channel, files: dict[str, Path]) -> None:
    mid = f"team/{uuid.uuid4().hex[:6]}:mlp@v2"
    await register(grpc_mesh, mid, files["onnx"])
    x = modelgen.sample_input(SPEC, batch=1)
    doc = {"inputs": [{"name": "INPUT0", "shape": [1, SPEC.in_dim], "datatype": "FP32", "data": x.tolist()}]}
    status, body = await post(http, f"/v2/models/{quote(mid, safe='')}/infer", doc)
    assert status == 200 and body["model_name"] == mid, body
    # Unencoded '/' and ':' work too where the endpoint's suffix is unambiguous.
    status, body = await post(http, f"/v2/models/{mid.replace('@', '%40')}/versions/1/infer", doc)
    assert status == 200 and body["model_name"] == mid, body
    status, v1 = await post(http, f"/v1/models/{mid.replace('@', '%40')}:predict", {"instances": x.tolist()})
    assert status == 200, v1
    assert_matches(v1["predictions"], SPEC, x)
    # A vmodel name resolves to its active model.
    vm = f"prod/{uuid.uuid4().hex[:6]}"
    await mm_grpc.ModelMeshStub(grpc_mesh).setVModel(mm.SetVModelRequest(vModelId=vm, targetModelId=mid, sync=True))
    status, body = await post(http, f"/v2/models/{quote(vm, safe='')}/infer", doc)
    assert status == 200 and body["model_name"] == mid, body
    status, v1vm = await post(http, f"/v1/models/{quote(vm, safe='')}:predict", {"instances": x.tolist()})
    assert status == 200 and v1vm == v1
    assert await get(http, f"/v1/models/{quote(vm, safe='')}") == (200, {"name": vm, "ready": True})


async def test_split_vmodels_draw_once_per_request_and_sticky_keys_stick(
        mesh: Mesh, http: aiohttp.ClientSession, grpc_mesh: grpc.aio.Channel, files: dict[str, Path]) -> None:
    from mesh.proto.meshserve.v1 import admin_pb2 as adm
    from mesh.proto.meshserve.v1 import admin_pb2_grpc as adm_grpc

    a, b, vm = unique("split-a"), unique("split-b"), unique("split-vm")
    for mid in (a, b):
        await register(grpc_mesh, mid, files["onnx"])
    req = adm.SetTrafficSplitRequest(vmodel_id=vm, sync=True)
    for mid in (a, b):
        req.targets.add(model_id=mid, weight=50)
    await adm_grpc.MeshAdminStub(grpc_mesh).SetTrafficSplit(req, timeout=60)
    x = modelgen.sample_input(SPEC, batch=1)
    doc = {"inputs": [{"name": "INPUT0", "shape": [1, SPEC.in_dim], "datatype": "FP32", "data": x.tolist()}]}
    before = await asyncio.to_thread(scrape, mesh.metrics)
    served = []
    for i in range(40):
        status, body = await post(http, f"/v2/models/{url(vm)}/infer", doc)
        assert status == 200, body
        served.append(body["model_name"])
        status, pred = await post(http, f"/v1/models/{url(vm)}:predict", {"instances": x.tolist()})
        assert status == 200, pred
        assert_matches(pred["predictions"], SPEC, x)
    assert set(served) == {a, b}  # 2^-39 odds of one target only
    after = await asyncio.to_thread(scrape, mesh.metrics)
    counted = sum(after.get(f'meshserve_split_requests_total{{model="{m}",vmodel="{vm}"}}', 0.0)
                  - before.get(f'meshserve_split_requests_total{{model="{m}",vmodel="{vm}"}}', 0.0) for m in (a, b))
    assert counted == 80  # one draw per request, V1 included (its signature lookup draws nothing)
    for key in ("user-1", "user-2", "user-3"):
        got = {(await post(http, f"/v2/models/{url(vm)}/infer", doc, headers={"mm-split-key": key}))[1]["model_name"]
               for _ in range(5)}
        assert len(got) == 1, (key, got)


async def test_bytes_tensors_over_v1_v2_json_and_tritonclient_http(
        mesh: Mesh, http: aiohttp.ClientSession, grpc_mesh: grpc.aio.Channel, tmp_path: Path) -> None:
    import tritonclient.http as httpclient

    from mesh.modelgen_strings import tagger_reference, write_onnx_tagger

    mid = unique("tagger")
    await register(grpc_mesh, mid, write_onnx_tagger(tmp_path / "tagger.onnx"))
    texts = ["hello", "wörld", "", "naïve café"]
    want = [t.decode() for t in tagger_reference(texts)]
    status, body = await post(http, f"/v1/models/{url(mid)}:predict", {"instances": texts})
    assert (status, body) == (200, {"predictions": want})
    status, body = await post(http, f"/v2/models/{url(mid)}/infer", {
        "inputs": [{"name": "TEXT", "shape": [4], "datatype": "BYTES", "data": texts}]})
    assert status == 200 and body["outputs"][0]["datatype"] == "BYTES" and body["outputs"][0]["data"] == want

    def binary() -> list[bytes]:
        client = httpclient.InferenceServerClient(mesh.router.rest_endpoint)
        try:
            inp = httpclient.InferInput("TEXT", [len(texts)], "BYTES")
            inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
            return list(client.infer(mid, [inp]).as_numpy("TAGGED"))
        finally:
            client.close()

    assert await asyncio.to_thread(binary) == list(tagger_reference(texts))


# -- errors -------------------------------------------------------------------


async def test_bad_requests_are_400_naming_the_field(
        http: aiohttp.ClientSession, grpc_mesh: grpc.aio.Channel, files: dict[str, Path]) -> None:
    mid = unique("bad")
    await register(grpc_mesh, mid, files["onnx"])
    infer, predict = f"/v2/models/{url(mid)}/infer", f"/v1/models/{url(mid)}:predict"

    def t(**kw: Any) -> dict[str, Any]:
        return {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0.0] * 16, **kw}]}

    cases: list[tuple[str, Any, str]] = [
        (infer, b"{not json", "request body is not valid JSON"),
        (infer, b"[1, 2]", "request body must be a JSON object"),
        (infer, {"inputs": []}, "inputs must be a non-empty list"),
        (infer, t(datatype="FP99"), "inputs[0].datatype: unknown datatype 'FP99'"),
        (infer, t(shape=[1, -16]), "inputs[0].shape must be a list of non-negative integers"),
        (infer, t(data=[0.0] * 15), "inputs[0].data ('INPUT0'): shape [1, 16] needs 16 values, got 15"),
        (infer, t(data=["a"] * 16), "inputs[0].data ('INPUT0'): FP32 data must be numbers, got strings"),
        (infer, t(datatype="INT32", data=[1.5] * 16), "INT32 data must be whole numbers"),
        (infer, t(data=[[0.0] * 8, [0.0] * 7]), "nested lists must be rectangular"),
        (infer, {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32"}]}, "has no data"),
        (infer, t(name="NOPE"), "has no input 'NOPE'"),  # the runtime's check, passed through
        (infer, t(shape=[2, 8]), "expected shape [-1, 16]"),
        (infer, {**t(), "outputs": [{"name": "WHAT"}]}, "WHAT"),
        (predict, {"instancez": []}, 'the body needs "instances"'),
        (predict, {"instances": "abc"}, "instances must be a non-empty list"),
        (predict, {"instances": [[0.5] * 16, [0.5] * 3]}, "instances: nested lists must be rectangular"),
    ]
    for path, body, message in cases:
        status, err = await post(http, path, body)
        assert status == 400 and message in err["error"], (body, status, err)
        assert "Traceback" not in err["error"]
    # Binary extension: sizes that do not add up.
    head = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 64}}]}).encode()
    for tail, hl, message in ((b"\0" * 60, len(head), "only 60 bytes of binary data are left"),
                              (b"\0" * 68, len(head), "4 bytes of binary data after"),
                              (b"\0" * 64, len(head) + 1000, "Inference-Header-Content-Length is"),
                              (b"\0" * 64, "x", "must be a number of bytes")):
        status, err = await post(http, infer, head + tail, headers={"Inference-Header-Content-Length": str(hl)})
        assert status == 400 and message in err["error"], (status, err)
    for bad in ("abc", "-1", "0"):
        status, err = await post(http, f"{infer}?timeout={bad}", t())
        assert status == 400 and "query parameter timeout" in err["error"], err


async def test_unknown_models_and_endpoints_are_404_wrong_methods_405(http: aiohttp.ClientSession) -> None:
    for method, path in (("POST", "/v1/models/nope:predict"), ("POST", "/v2/models/nope/infer"),
                         ("GET", "/v2/models/nope"), ("GET", "/v1/models/nope"), ("GET", "/v2/models/nope/ready")):
        async with http.request(method, path, json={"instances": [[1]]}) as r:
            assert r.status == 404, path
            assert "'nope'" in (await r.json())["error"] and "registered" in (await r.json())["error"]
    async with http.get("/v3/whatever") as r:
        assert r.status == 404 and "POST /v2/models/<name>[/versions/<v>]/infer" in (await r.json())["error"]
    async with http.get("/v2/models/x/infer") as r:
        assert r.status == 405 and r.headers["Allow"] == "POST" and "use POST" in (await r.json())["error"]
    assert await get(http, "/v2/health/live") == (200, {"live": True})
    assert await get(http, "/v2/health/ready") == (200, {"ready": True})


async def test_a_model_that_cannot_load_is_503_with_the_reason(
        http: aiohttp.ClientSession, grpc_mesh: grpc.aio.Channel, files: dict[str, Path]) -> None:
    mid = unique("corrupt")
    await register(grpc_mesh, mid, files["corrupt"])
    for path, body in ((f"/v1/models/{url(mid)}:predict", {"instances": [[0.0] * 16]}),
                       (f"/v2/models/{url(mid)}/infer", {"inputs": [{"name": "INPUT0", "shape": [1, 16],
                                                                     "datatype": "FP32", "data": [0.0] * 16}]})):
        status, err = await post(http, path, body)
        assert status == 503, err
        assert "LOADING_FAILED" in err["error"] and "corrupt.onnx" in err["error"], err


async def test_deadline_is_504_and_an_oversized_body_413(
        http: aiohttp.ClientSession, grpc_mesh: grpc.aio.Channel, files: dict[str, Path]) -> None:
    mid = unique("slow")
    await register(grpc_mesh, mid, files["onnx"])
    doc = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0.0] * 16}]}
    # 1 ms cannot cover a cold load (a gRPC call, an etcd transaction and an ONNX session).
    status, err = await post(http, f"/v2/models/{url(mid)}/infer?timeout=1ms", doc)
    assert status == 504 and mid in err["error"] and "deadline" in err["error"], err
    status, err = await post(http, f"/v1/models/{url(mid)}:predict", {"instances": [[0.0] * 16]},
                             headers={"Timeout": "0.001"})
    assert status == 504, err
    big = b'{"instances": [' + b"0.0," * (BODY_LIMIT // 4) + b"0.0]}"
    status, err = await post(http, f"/v1/models/{url(mid)}:predict", big)
    assert status == 413 and f"over the limit of {BODY_LIMIT} bytes" in err["error"], err
    # The load the 1 ms requests started was shared, not theirs to fail: a request with
    # time to wait gets the model.
    status, _ = await post(http, f"/v2/models/{url(mid)}/infer?timeout=60", doc)
    assert status == 200


# -- both protocols at once, and the metrics ---------------------------------


async def test_concurrent_rest_and_grpc_traffic_all_correct_and_counted_by_protocol(
        mesh: Mesh, http: aiohttp.ClientSession, grpc_mesh: grpc.aio.Channel, files: dict[str, Path]) -> None:
    ids = [unique("mix") for _ in range(3)]
    for mid in ids:
        await register(grpc_mesh, mid, files["onnx"])
    before = await asyncio.to_thread(scrape, mesh.metrics)
    stub = v2_grpc.GRPCInferenceServiceStub(grpc_mesh)

    async def over_grpc(mid: str, seed: int) -> bool:
        x = modelgen.sample_input(SPEC, batch=2, seed=seed)
        req = v2.ModelInferRequest(model_name=mid)
        req.inputs.add(name="INPUT0", datatype="FP32", shape=list(x.shape))
        req.raw_input_contents.append(x.tobytes())
        resp = await stub.ModelInfer(req, timeout=60)
        out = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(2, SPEC.out_dim)
        return bool(np.allclose(out, reference(SPEC, x), rtol=1e-4, atol=1e-5))

    async def over_rest(mid: str, seed: int) -> bool:
        x = modelgen.sample_input(SPEC, batch=2, seed=seed)
        status, body = await post(http, f"/v1/models/{url(mid)}:predict", {"instances": x.tolist()})
        return status == 200 and bool(np.allclose(np.array(body["predictions"], np.float32), reference(SPEC, x),
                                                  rtol=1e-4, atol=1e-5))

    n = 30
    results = await asyncio.gather(*(f(ids[i % 3], i) for i in range(n) for f in (over_grpc, over_rest)))
    assert all(results) and len(results) == 2 * n
    assert (await post(http, "/v2/models/not-there/infer", {"inputs": []}))[0] == 404
    after = await asyncio.to_thread(scrape, mesh.metrics)

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta('meshserve_requests_total{code="OK",method="ModelInfer",protocol="grpc"}') == n
    assert delta('meshserve_requests_total{code="OK",method="Predict",protocol="rest"}') == n
    assert delta('meshserve_request_seconds_count{method="Predict",protocol="rest"}') == n
    assert delta('meshserve_requests_total{code="NOT_FOUND",method="ModelInfer",protocol="rest"}') == 1


# -- a runtime gone, and the CLI ----------------------------------------------


async def test_runtime_gone_is_503_after_retries(etcd_server: LocalEtcd, files: dict[str, Path]) -> None:
    from router.server import RouterServer
    from router.settings import RouterSettings

    name = unique("rest-gone")
    # A long lease: the dead runtime's copy stays in the mirror, so requests really try it.
    rt = start_runtime(etcd_server.endpoint, name, capacity="64Mi",
                       env={"MESHSERVE_MODEL_TYPES": "onnx", "MESHSERVE_LEASE_TTL_S": "60"})
    router = RouterServer(RouterSettings(etcd=etcd_server.endpoint, mesh=name, listen="127.0.0.1:0",
                                         rest_listen="127.0.0.1:0", scale_interval_s=3600))
    await router.start()
    try:
        async with grpc.aio.insecure_channel(router.endpoint) as ch, \
                aiohttp.ClientSession(f"http://{router.rest_endpoint}") as http:
            for _ in range(200):
                if router.mirror.instances:
                    break
                await asyncio.sleep(0.05)
            await register(ch, "m", files["onnx"])
            doc = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0.0] * 16}]}
            assert (await post(http, "/v2/models/m/infer", doc))[0] == 200
            rt.kill()
            status, err = await post(http, "/v2/models/m/infer", doc)
            assert status == 503 and "no runtime can load model 'm'" in err["error"], err
    finally:
        await router.stop(0)
        rt.kill()


async def test_up_serves_rest_and_prints_where(etcd_server: LocalEtcd, tmp_path: Path) -> None:
    import re
    import signal
    import sys

    from tests.procs import ROOT

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh.cli", "up", "--runtimes", "1", "--listen", "127.0.0.1:0",
        "--rest-listen", "127.0.0.1:0", "--etcd", etcd_server.endpoint, "--mesh", unique("rest-up"),
        "--capacity", "64Mi", "--data-dir", str(tmp_path), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    try:
        lines, rest = [], None
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 180)).decode()
            assert line, "meshserve up exited early:\n" + "".join(lines)
            lines.append(line)
            m = re.search(r"REST \(KServe V1/V2\) on http://(\S+)", line)
            rest = m.group(1) if m else rest
            if line.startswith("ready:"):
                break
        assert rest is not None, lines
        async with aiohttp.ClientSession(f"http://{rest}") as http:
            assert await get(http, "/v2/health/ready") == (200, {"ready": True})
            assert await get(http, "/v1/models") == (200, {"models": []})
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
