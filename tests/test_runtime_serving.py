"""One real runtime process on loopback, driven through the SPI and tritonclient:
correct outputs, dtypes, bad requests, corrupt models, single-flight loads."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pbg
from tritonclient.utils import InferenceServerException

from mesh import modelgen
from mesh.etcd_server import LocalEtcd
from mesh.proto.mmesh import model_runtime_pb2 as rpb
from mesh.registry import records as rec
from mesh.runtime.tensors import DATATYPES, datatype_of, decode_outputs, encode_inputs_typed
from tests.procs import RuntimeProc, start_runtime
from tests.runtime_helpers import Spi, copies, eventually, instance, rpc_error, scrape

SPEC = modelgen.MlpSpec(in_dim=16, hidden=124, out_dim=4, seed=7)
DEVICE = os.environ.get("MESHSERVE_TEST_DEVICE", "cpu")  # set to cuda on a GPU machine


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    corrupt_onnx = d / "corrupt.onnx"
    corrupt_onnx.write_bytes(b"this is not a protobuf \xff\xfe" * 40)
    truncated = d / "truncated.onnx"
    full = modelgen.write_onnx_mlp(SPEC, d / "full.onnx").read_bytes()
    truncated.write_bytes(full[: len(full) // 2])
    return {
        "onnx": modelgen.write_onnx_mlp(SPEC, d / "mlp.onnx"),
        "pt": modelgen.write_torchscript_mlp(SPEC, d / "mlp.pt"),
        "pt_noschema": modelgen.write_torchscript_mlp(SPEC, d / "bare.pt", embed_schema=False),
        "identity": modelgen.write_onnx_identity(d / "identity.onnx"),
        "big": modelgen.write_onnx_mlp(modelgen.spec_for_bytes(4_000_000, seed=3), d / "big.onnx"),
        "corrupt": corrupt_onnx,
        "truncated": truncated,
    }


@pytest.fixture(scope="module")
def mesh() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def runtime(etcd_server: LocalEtcd, mesh: str) -> Iterator[RuntimeProc]:
    with start_runtime(etcd_server.endpoint, mesh, capacity="1Gi",
                       extra_args=["--metrics-listen", "127.0.0.1:0", "--device", DEVICE]) as rt:
        yield rt
        assert rt.terminate() == 0, rt.log()[-3000:]


@pytest.fixture(scope="module")
def spi(runtime: RuntimeProc) -> Iterator[Spi]:
    s = Spi(runtime.endpoint)
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(runtime: RuntimeProc) -> tc.InferenceServerClient:
    return tc.InferenceServerClient(runtime.endpoint)


@pytest.fixture(scope="module")
def v2(runtime: RuntimeProc) -> Iterator[pbg.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(runtime.endpoint) as ch:
        yield pbg.GRPCInferenceServiceStub(ch)


def _infer(client: tc.InferenceServerClient, model: str, inputs: dict[str, np.ndarray]) -> tc.InferResult:
    """tritonclient's way: raw_input_contents."""
    tensors = []
    for name, arr in inputs.items():
        t = tc.InferInput(name, list(arr.shape), datatype_of(arr.dtype))
        t.set_data_from_numpy(arr)
        tensors.append(t)
    return client.infer(model, tensors)


def test_onnx_and_torchscript_match_the_reference_raw_and_typed(
    spi: Spi, client: tc.InferenceServerClient, v2: pbg.GRPCInferenceServiceStub, models: dict[str, Path]
) -> None:
    assert spi.load("mlp-onnx", models["onnx"]) > 0
    assert spi.load("mlp-pt", models["pt"], model_type="pytorch") > 0
    # A key schema stands in for a signature the archive lacks.
    key = json.dumps({"schema": modelgen.mlp_schema(SPEC)})
    assert spi.load("mlp-pt-key", models["pt_noschema"], model_type="pytorch", key=key) > 0
    x = modelgen.sample_input(SPEC, batch=5)
    want = modelgen.reference_output(SPEC, x)
    for model in ("mlp-onnx", "mlp-pt", "mlp-pt-key"):
        got = _infer(client, model, {"INPUT0": x}).as_numpy("OUTPUT0")  # raw both ways
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=model)
        req = pb.ModelInferRequest(model_name=model)
        encode_inputs_typed(req, {"INPUT0": x})
        resp = v2.ModelInfer(req, timeout=10)
        assert resp.model_name == model and len(resp.raw_output_contents) == 1  # answers raw
        np.testing.assert_allclose(decode_outputs(resp)["OUTPUT0"], want, rtol=1e-4, atol=1e-5, err_msg=model)
        meta = client.get_model_metadata(model)
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("INPUT0", "FP32", [-1, 16])]
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("OUTPUT0", "FP32", [-1, 4])]
        assert client.is_model_ready(model)


def test_every_datatype_round_trips_raw_and_typed(
    spi: Spi, client: tc.InferenceServerClient, v2: pbg.GRPCInferenceServiceStub, models: dict[str, Path]
) -> None:
    spi.load("identity", models["identity"])
    rng = np.random.default_rng(0)
    inputs = {}
    for dt in modelgen.IDENTITY_DTYPES:
        dtype = DATATYPES[dt]
        if dt == "BOOL":
            arr = rng.integers(0, 2, (3, 4)).astype(bool)
        elif dtype.kind == "f":
            arr = rng.standard_normal((3, 4)).astype(dtype)
        else:
            info = np.iinfo(dtype)
            arr = rng.integers(max(info.min, -1000), min(info.max, 1000), (3, 4)).astype(dtype)
        inputs[f"IN_{dt}"] = arr
    result = _infer(client, "identity", inputs)
    for dt in modelgen.IDENTITY_DTYPES:
        out = result.as_numpy(f"OUT_{dt}")
        assert out.dtype == inputs[f"IN_{dt}"].dtype and np.array_equal(out, inputs[f"IN_{dt}"]), dt
    typed = {k: v for k, v in inputs.items() if k != "IN_FP16"}
    req = pb.ModelInferRequest(model_name="identity")
    encode_inputs_typed(req, typed)
    req.inputs.add(name="IN_FP16", datatype="FP16", shape=[3, 4])
    # Typed FP16 does not exist in V2: the runtime says so (and names the input).
    err = rpc_error(lambda: v2.ModelInfer(req, timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "IN_FP16" in err.details()
    del req.inputs[-1]
    only = pb.ModelInferRequest(model_name="identity")
    encode_inputs_typed(only, typed)
    err = rpc_error(lambda: v2.ModelInfer(only, timeout=10))
    assert "missing input 'IN_FP16'" in err.details()


def test_bad_requests_get_precise_statuses(
    runtime: RuntimeProc, spi: Spi, client: tc.InferenceServerClient, models: dict[str, Path]
) -> None:
    spi.load("bad-req", models["onnx"])
    x = modelgen.sample_input(SPEC)

    def status(fn: object) -> tuple[str, str]:
        with pytest.raises(InferenceServerException) as e:
            fn()  # type: ignore[operator]
        return str(e.value.status()), e.value.message()

    code, msg = status(lambda: _infer(client, "no-such-model", {"INPUT0": x}))
    assert code == "StatusCode.NOT_FOUND"
    assert msg == f"model 'no-such-model' is not loaded on runtime {runtime.instance_id}"
    code, msg = status(lambda: _infer(client, "bad-req", {"INPUT0": x.astype(np.float64)}))
    assert code == "StatusCode.INVALID_ARGUMENT" and "'INPUT0'" in msg and "expected datatype FP32, got FP64" in msg
    code, msg = status(lambda: _infer(client, "bad-req", {"INPUT0": np.zeros((2, 15), np.float32)}))
    assert code == "StatusCode.INVALID_ARGUMENT" and "expected shape [-1, 16]" in msg and "got [2, 15]" in msg
    code, msg = status(lambda: _infer(client, "bad-req", {"OTHER": x}))
    assert code == "StatusCode.INVALID_ARGUMENT" and "no input 'OTHER'" in msg
    code, msg = status(lambda: client.infer("bad-req", []))
    assert code == "StatusCode.INVALID_ARGUMENT" and "missing input 'INPUT0'" in msg
    inp = tc.InferInput("INPUT0", [3, 16], "FP32")
    inp.set_data_from_numpy(x)
    code, msg = status(lambda: client.infer("bad-req", [inp], outputs=[tc.InferRequestedOutput("NOPE")]))
    assert code == "StatusCode.INVALID_ARGUMENT" and "no output 'NOPE'" in msg
    code, msg = status(lambda: client.get_model_metadata("no-such-model"))
    assert code == "StatusCode.NOT_FOUND"
    assert not client.is_model_ready("no-such-model")

    with grpc.insecure_channel(runtime.endpoint) as ch:
        for method in ("/inference.GRPCInferenceService/ModelInfer", "/mmesh.ModelRuntime/loadModel"):
            raw = ch.unary_unary(method)
            err = rpc_error(lambda: raw(b"\xff\xff\xff\xff garbage", timeout=10))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, err)
            assert "not a valid" in err.details()
        # The mm-model-id header wins over model_name (the router's forwarding).
        stub = pbg.GRPCInferenceServiceStub(ch)
        req = pb.ModelInferRequest(model_name="some-vmodel-name")
        encode_inputs_typed(req, {"INPUT0": x})
        resp = stub.ModelInfer(req, metadata=[("mm-model-id", "bad-req")], timeout=10)
        assert decode_outputs(resp)["OUTPUT0"].shape == (3, 4)
        resp = stub.ModelInfer(req, metadata=[("mm-model-id-bin", "bad-req".encode())], timeout=10)
        assert decode_outputs(resp)["OUTPUT0"].shape == (3, 4)


def test_spi_refuses_bad_loads_without_attempting_them(spi: Spi, models: dict[str, Path]) -> None:
    for model_id, model_type, path, words in (
        ("ok-id", "tensorflow", models["onnx"], "unknown model type 'tensorflow'"),
        ("ok-id", "", models["onnx"], "model type is empty"),
        ("", "onnx", models["onnx"], "model id is empty"),
        ("../etc/passwd", "onnx", models["onnx"], "'..'"),
        ("ok-id", "onnx", "", "modelPath is empty"),
    ):
        err = rpc_error(lambda: spi.load(model_id, path, model_type=model_type))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and words in err.details(), err
    missing = str(Path(models["onnx"]).parent / "nonexistent" / "model.onnx")  # inside the model roots
    err = rpc_error(lambda: spi.load("missing-file", missing))
    assert err.code() == grpc.StatusCode.NOT_FOUND and missing in err.details()
    # The puller is wired in: a remote URI without credentials says what to configure.
    err = rpc_error(lambda: spi.load("remote", "s3://bucket/model.onnx"))
    assert "no credentials" in err.details() and "storage_key" in err.details()
    err = rpc_error(lambda: spi.load("bare-pt", models["pt_noschema"], model_type="pytorch"))
    assert "does not say which tensors it takes" in err.details()
    assert rpc_error(lambda: spi.size("ok-id")).code() == grpc.StatusCode.NOT_FOUND
    predict = spi.stub.predictModelSize
    local = predict(rpb.PredictModelSizeRequest(modelId="p", modelType="onnx", modelPath=str(models["onnx"])))
    assert local.sizeInBytes == int(models["onnx"].stat().st_size * 1.5) + 65536
    remote = predict(rpb.PredictModelSizeRequest(modelId="p", modelType="onnx", modelPath="s3://b/m.onnx"))
    assert remote.sizeInBytes == 64 * 2**20  # the default model size
    err = rpc_error(lambda: predict(rpb.PredictModelSizeRequest(modelId="p", modelType="tf", modelPath="x")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    spi.unload("never-loaded")  # success: not loaded is fine


def test_corrupt_model_fails_with_the_reason_and_the_runtime_stays_healthy(
    etcd_server: LocalEtcd, mesh: str, runtime: RuntimeProc, spi: Spi, client: tc.InferenceServerClient,
    models: dict[str, Path],
) -> None:
    for name in ("corrupt", "truncated"):
        err = rpc_error(lambda: spi.load(name, models[name]))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION  # the file's fault, not the runtime's
        assert str(models[name]) in err.details() and "not a loadable ONNX model" in err.details()
        assert "Protobuf parsing failed" in err.details() or "INVALID_PROTOBUF" in err.details()
    err = rpc_error(lambda: spi.load("corrupt-pt", models["corrupt"].rename(models["corrupt"].with_suffix(".pt")),
                                     model_type="pytorch"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "not a loadable TorchScript archive" in err.details()
    assert eventually(lambda: not any(copies(etcd_server.endpoint, mesh, ["corrupt", "truncated"]).values()))
    assert not client.is_model_ready("corrupt")
    assert spi.status().status == 1  # READY
    with grpc.insecure_channel(runtime.endpoint) as ch:
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    spi.load("after-corrupt", models["onnx"])
    x = modelgen.sample_input(SPEC)
    got = _infer(client, "after-corrupt", {"INPUT0": x}).as_numpy("OUTPUT0")
    np.testing.assert_allclose(got, modelgen.reference_output(SPEC, x), rtol=1e-4, atol=1e-5)


def test_concurrent_loads_of_one_model_are_one_load(
    etcd_server: LocalEtcd, mesh: str, runtime: RuntimeProc, spi: Spi, models: dict[str, Path]
) -> None:
    record = instance(etcd_server.endpoint, mesh, runtime.instance_id)
    assert record is not None and record.metrics_endpoint
    before = scrape(record.metrics_endpoint)
    sizes: list[int] = []
    errors: list[BaseException] = []

    def load() -> None:
        try:
            sizes.append(spi.load("single-flight", models["big"]))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(sizes) == 8 and len(set(sizes)) == 1
    after = scrape(record.metrics_endpoint)
    key = 'meshserve_model_loads_total{result="success"}'
    assert after[key] - before.get(key, 0) == 1
    assert spi.size("single-flight") == sizes[0] >= models["big"].stat().st_size
    (copy,) = copies(etcd_server.endpoint, mesh, ["single-flight"])["single-flight"]
    assert copy.state == rec.LOADED and copy.size_bytes == sizes[0] and copy.instance_id == runtime.instance_id


def test_instance_record_describes_the_runtime(etcd_server: LocalEtcd, mesh: str, runtime: RuntimeProc,
                                               spi: Spi, client: tc.InferenceServerClient,
                                               models: dict[str, Path]) -> None:
    spi.load("rec-model", models["onnx"])
    _infer(client, "rec-model", {"INPUT0": modelgen.sample_input(SPEC)})
    status = spi.status()
    assert status.capacityInBytes == 2**30
    assert list(status.methodInfos["/inference.GRPCInferenceService/ModelInfer"].idInjectionPath) == [1]

    def settled() -> rec.InstanceRecord | None:
        r = instance(etcd_server.endpoint, mesh, runtime.instance_id)
        return r if r and r.model_count and r.loads_in_progress == 0 and r.requests_per_min else None

    record = eventually(settled)
    assert record is not None
    assert record.endpoint == runtime.endpoint and record.lease_id and record.capacity_bytes == 2**30
    # Every built-in type whose library imports (the cpu extra brings them all).
    assert set(record.model_types) == {"onnx", "pytorch", "sklearn", "xgboost", "lightgbm"} and record.device == DEVICE
    assert 0 < record.used_bytes <= record.capacity_bytes and record.oldest_lru_ms > 0 and record.start_ms > 0
    assert not record.shutting_down and record.version


def test_health_and_reflection_list_every_service(runtime: RuntimeProc) -> None:
    from grpc_reflection.v1alpha import reflection_pb2 as refl
    from grpc_reflection.v1alpha import reflection_pb2_grpc as refl_grpc

    with grpc.insecure_channel(runtime.endpoint) as ch:
        stub = refl_grpc.ServerReflectionStub(ch)
        (listing,) = stub.ServerReflectionInfo(iter([refl.ServerReflectionRequest(list_services="")]), timeout=10)
        names = {s.name for s in listing.list_services_response.service}
        assert {"mmesh.ModelRuntime", "inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "mmesh.ModelRuntime", "inference.GRPCInferenceService"):
            got = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert got.status == health_pb2.HealthCheckResponse.SERVING, service
