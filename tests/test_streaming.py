"""ModelStreamInfer and BYTES tensors through a real mesh: etcd, runtime processes,
the router, and tritonclient's own stream and BYTES encoding."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from tritonclient.grpc import service_pb2 as v2
from tritonclient.grpc import service_pb2_grpc as v2_grpc

from mesh import modelgen
from mesh.modelgen_strings import tagger_reference, write_onnx_tagger
from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.proto.mmesh import model_mesh_pb2_grpc as mm_grpc
from router.server import RouterServer
from tests.procs import RuntimeProc
from tests.runtime_helpers import scrape
from tests.test_e2e import start_router, start_runtimes

# A tiny model is charged ~175 KB: room for 12 per runtime, 24 in all.
TWELVE_TINY = 2_200_000


@pytest.fixture
def runtimes(etcd_server, mesh_name) -> Iterator[list[RuntimeProc]]:
    procs = start_runtimes(etcd_server.endpoint, mesh_name, 2, TWELVE_TINY)
    yield procs
    for p in procs:
        if p.running:
            p.kill()


@pytest.fixture
async def router(etcd_server, mesh_name, runtimes) -> AsyncIterator[RouterServer]:
    r = await start_router(etcd_server, mesh_name, len(runtimes), metrics_listen="127.0.0.1:0")
    yield r
    await r.stop(0)


async def register(router: RouterServer, model_id: str, path: Path) -> None:
    async with grpc.aio.insecure_channel(router.endpoint) as ch:
        await mm_grpc.ModelMeshStub(ch).registerModel(mm.RegisterModelRequest(
            modelId=model_id, modelInfo=mm.ModelInfo(type="onnx", path=str(path))))


def infer_request(model: str, spec: modelgen.MlpSpec, seed: int, rid: str) -> v2.ModelInferRequest:
    x = modelgen.sample_input(spec, batch=1, seed=seed)
    req = v2.ModelInferRequest(model_name=model, id=rid)
    req.inputs.add(name="INPUT0", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    return req


def output_of(resp: v2.ModelInferResponse) -> np.ndarray:
    return np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(list(resp.outputs[0].shape))


async def wait_for_gauges_zero(endpoint: str) -> dict[str, float]:
    names = ("meshserve_streams_open", "meshserve_stream_requests_in_flight")
    for _ in range(200):
        samples = scrape(endpoint)
        if all(samples.get(n) == 0 for n in names):
            return samples
        await asyncio.sleep(0.05)
    return {n: scrape(endpoint).get(n, -1) for n in names}


async def test_1000_requests_on_one_stream_across_20_models_answer_by_id_in_model_order(
        router: RouterServer, model_files) -> None:
    files = model_files[:20]
    for i, (_, path) in enumerate(files):
        await register(router, f"s{i:02d}", path)
    async with grpc.aio.insecure_channel(router.endpoint) as ch:  # half loaded; the stream loads the rest
        for i in range(0, 20, 2):
            await mm_grpc.ModelMeshStub(ch).ensureLoaded(mm.EnsureLoadedRequest(modelId=f"s{i:02d}", sync=True))
    # tritonclient's own stream client (model named in the body, as it sends it).
    results: queue.Queue = queue.Queue()
    client = tgrpc.InferenceServerClient(router.endpoint)
    client.start_stream(callback=lambda result, error: results.put((result, error)), stream_timeout=120)
    sent: dict[str, tuple[int, int]] = {}  # request id -> (model index, input seed)
    rng = np.random.default_rng(7)
    for n in range(1000):
        k = int(rng.zipf(1.3)) % 20
        spec = files[k][0]
        x = modelgen.sample_input(spec, batch=1, seed=n)
        inp = tgrpc.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        client.async_stream_infer(f"s{k:02d}", [inp], request_id=str(n))
        sent[str(n)] = (k, n)
    got: list[tuple[str, str]] = []
    for _ in range(1000):
        result, error = await asyncio.to_thread(results.get, True, 120)
        assert error is None, error.message()
        resp = result.get_response()
        k, seed = sent[resp.id]
        assert resp.model_name == f"s{k:02d}"
        expected = modelgen.reference_output(files[k][0], modelgen.sample_input(files[k][0], batch=1, seed=seed))
        assert np.allclose(result.as_numpy("OUTPUT0"), expected, rtol=1e-4, atol=1e-5), resp.id
        got.append((resp.model_name, resp.id))
    client.stop_stream()
    client.close()
    assert sorted(int(i) for _, i in got) == list(range(1000))
    for model in {m for m, _ in got}:  # one model's answers come back in the order it was asked
        ids = [int(i) for m, i in got if m == model]
        assert ids == sorted(ids), model
    loads = sum(v for p in router.mirror.instances.values()
                for k, v in scrape(p.metrics_endpoint).items()
                if k.startswith("meshserve_model_loads_total{") and "success" in k)
    # The stream loaded what it found unloaded (placement may move a model, so a few load twice).
    assert loads >= 20, loads


async def test_a_failing_request_gets_an_error_with_its_id_and_the_stream_goes_on(
        router: RouterServer, model_files, tmp_path: Path) -> None:
    spec, path = model_files[0]
    await register(router, "good", path)
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"not an onnx model at all")
    await register(router, "broken", bad)
    async with grpc.aio.insecure_channel(router.endpoint) as ch:
        call = v2_grpc.GRPCInferenceServiceStub(ch).ModelStreamInfer(timeout=60)
        await call.write(infer_request("good", spec, 1, "a"))
        await call.write(infer_request("broken", spec, 2, "b"))
        wrong = infer_request("good", spec, 3, "c")
        wrong.inputs[0].shape[:] = [1, 3]
        await call.write(wrong)
        await call.write(infer_request("missing", spec, 4, "d"))
        await call.write(infer_request("good", spec, 5, "e"))
        await call.done_writing()
        answers = {r.infer_response.id: r async for r in call}
    assert set(answers) == {"a", "b", "c", "d", "e"}
    for rid, seed in (("a", 1), ("e", 5)):
        assert not answers[rid].error_message
        expected = modelgen.reference_output(spec, modelgen.sample_input(spec, batch=1, seed=seed))
        assert np.allclose(output_of(answers[rid].infer_response), expected, rtol=1e-4, atol=1e-5)
    assert "broken" in answers["b"].error_message and "not a loadable ONNX model" in answers["b"].error_message
    assert answers["c"].error_message.startswith("INVALID_ARGUMENT") and "shape" in answers["c"].error_message
    assert answers["d"].error_message.startswith("NOT_FOUND") and "missing" in answers["d"].error_message
    assert "Traceback" not in "".join(a.error_message for a in answers.values())


async def test_a_client_cancelling_leaves_no_stream_work_on_router_or_runtime(
        router: RouterServer, runtimes: list[RuntimeProc], model_files) -> None:
    for i, (_, path) in enumerate(model_files[:8]):
        await register(router, f"c{i}", path)
    spec = model_files[0][0]
    async with grpc.aio.insecure_channel(router.endpoint) as ch:
        call = v2_grpc.GRPCInferenceServiceStub(ch).ModelStreamInfer(timeout=60)
        for n in range(200):  # misses among them: loads are in flight when the client goes
            k = n % 8
            await call.write(infer_request(f"c{k}", model_files[k][0], n, str(n)))
        first = await call.read()
        assert first.infer_response.id and not first.error_message
        call.cancel()
    # Straight to a runtime too: its own ModelStreamInfer, cancelled mid-way.
    async with grpc.aio.insecure_channel(router.endpoint) as ch:
        await mm_grpc.ModelMeshStub(ch).ensureLoaded(mm.EnsureLoadedRequest(modelId="c0", sync=True))
    holder = next(p for p in runtimes if p.instance_id in router.mirror.copies.get("c0", {}))
    async with grpc.aio.insecure_channel(holder.endpoint) as ch:
        call = v2_grpc.GRPCInferenceServiceStub(ch).ModelStreamInfer(metadata=(("mm-model-id", "c0"),), timeout=60)
        for n in range(100):
            await call.write(infer_request("c0", spec, n, str(n)))
        assert not (await call.read()).error_message
        call.cancel()
    for endpoint in [router.metrics.endpoint] + [router.mirror.instances[p.instance_id].metrics_endpoint
                                                 for p in runtimes]:
        samples = await wait_for_gauges_zero(endpoint)
        assert samples.get("meshserve_streams_open") == 0, endpoint
        assert samples.get("meshserve_stream_requests_in_flight") == 0, endpoint
    # And the mesh still answers.
    async with grpc.aio.insecure_channel(router.endpoint) as ch:
        resp = await v2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(infer_request("c1", model_files[1][0], 1, "x"),
                                                                      timeout=30)
        assert resp.id == "x"


async def test_a_string_model_over_grpc_raw_and_typed(router: RouterServer, tmp_path: Path) -> None:
    await register(router, "tagger", write_onnx_tagger(tmp_path / "tagger.onnx"))
    texts = ["hello", "wörld", "", "naïve café"]
    # tritonclient's BYTES encoding (raw, length-prefixed), through the router.
    client = tgrpc.InferenceServerClient(router.endpoint)
    inp = tgrpc.InferInput("TEXT", [len(texts)], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    result = await asyncio.to_thread(client.infer, "tagger", [inp])
    assert result.get_output("TAGGED").datatype == "BYTES"
    assert list(result.as_numpy("TAGGED")) == list(tagger_reference(texts))
    client.close()
    # Typed bytes_contents in, raw out.
    req = v2.ModelInferRequest(model_name="tagger")
    t = req.inputs.add(name="TEXT", datatype="BYTES", shape=[2])
    t.contents.bytes_contents.extend([b"a", b"b"])
    async with grpc.aio.insecure_channel(router.endpoint) as ch:
        stub = v2_grpc.GRPCInferenceServiceStub(ch)
        resp = await stub.ModelInfer(req, timeout=30)
        meta = await stub.ModelMetadata(v2.ModelMetadataRequest(name="tagger"), timeout=30)
        assert (meta.inputs[0].datatype, meta.outputs[0].datatype) == ("BYTES", "BYTES")
        from mesh.runtime.tensors import decode_outputs
        assert list(decode_outputs(resp)["TAGGED"]) == list(tagger_reference(["a", "b"]))
        # Malformed raw BYTES: a precise INVALID_ARGUMENT, not a crash.
        bad = v2.ModelInferRequest(model_name="tagger")
        bad.inputs.add(name="TEXT", datatype="BYTES", shape=[2])
        bad.raw_input_contents.append(b"\x05\x00\x00\x00abc")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ModelInfer(bad, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "BYTES element 0 claims 5 bytes" in err.value.details()
        notutf8 = v2.ModelInferRequest(model_name="tagger")
        t = notutf8.inputs.add(name="TEXT", datatype="BYTES", shape=[1])
        t.contents.bytes_contents.append(b"\xff\xfe")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ModelInfer(notutf8, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "UTF-8" in err.value.details()
