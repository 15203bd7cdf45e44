"""Fuzzing every gRPC method of a real router and a real runtime process.

Hypothesis (derandomized: the same examples every run, bounded) sends random and
mutated bodies with random headers to every method of every service each server
registers, as raw bytes through grpc's generic calls. For a client fault the
answer must be a precise status (never UNKNOWN or INTERNAL, never a dead
process), and a good request must still be answered correctly afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as v2

from mesh import modelgen
from mesh.proto.meshserve.v1 import admin_pb2 as adm
from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.proto.mmesh import model_runtime_pb2 as spi
from tests.procs import RuntimeProc, start_runtime
from tests.security_support import RouterProc, start_router

SPEC = modelgen.spec_for_bytes(20_000, seed=5)
#: A client fault must never come back as one of these.
SERVER_FAULTS = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
FUZZ = settings(max_examples=250, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"


def methods(*services) -> list[tuple[str, bool, bool]]:  # type: ignore[no-untyped-def]
    """(path, client streaming, server streaming) of every method of ``services``."""
    out = []
    for svc in services:
        out += [(f"/{svc.full_name}/{m.name}", m.client_streaming, m.server_streaming) for m in svc.methods]
    return out


def _plain(*paths: str) -> list[tuple[str, bool, bool]]:
    return [(p, False, False) for p in paths]


def _infer(model_id: str) -> bytes:
    x = modelgen.sample_input(SPEC, batch=1)
    req = v2.ModelInferRequest(model_name=model_id)
    req.inputs.add(name="INPUT0", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.astype(np.float32).tobytes())
    return req.SerializeToString()


def seeds(model: Path) -> list[bytes]:
    """Valid messages that mutations start from (ids other than the good model's)."""
    info = mm.ModelInfo(type="onnx", path=str(model))
    return [m.SerializeToString() for m in (
        mm.RegisterModelRequest(modelId="fz-a", modelInfo=info, loadNow=True),
        mm.EnsureLoadedRequest(modelId="fz-a", sync=True),
        mm.SetVModelRequest(vModelId="fz-v", targetModelId="fz-a", modelInfo=info),
        mm.GetStatusRequest(modelId="good"),
        adm.ListModelsRequest(prefix="", page_size=3),
        adm.SetModelConfigRequest(model_id="fz-a", min_copies=1, labels={"a": "b"}),
        spi.LoadModelRequest(modelId="fz-b", modelType="onnx", modelPath=str(model)),
        spi.PredictModelSizeRequest(modelId="fz-b", modelType="onnx", modelPath=str(model)),
        v2.ModelMetadataRequest(name="good"),
    )] + [_infer("good")]


def mutated(seed_list: list[bytes]) -> st.SearchStrategy[bytes]:
    def mutate(seed: bytes, ops: list[tuple[int, int, bytes]]) -> bytes:
        data = bytearray(seed)
        for kind, pos, blob in ops:
            at = pos % (len(data) + 1)
            if kind == 0 and data:  # flip a byte
                data[at % len(data)] ^= blob[0] if blob else 0xFF
            elif kind == 1:  # insert
                data[at:at] = blob
            elif kind == 2:  # truncate
                del data[at:]
            else:  # duplicate a slice (repeated fields, field 1 twice)
                data[at:at] = data[: at or len(data)][:64]
        return bytes(data)

    op = st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=16))
    return st.builds(mutate, st.sampled_from(seed_list), st.lists(op, min_size=1, max_size=4))


KEYS = ["mm-model-id", "mm-vmodel-id", "mm-model-id-bin", "authorization", "meshserve-mesh-full", "x-fuzz", "mm-balanced"]
header = st.tuples(st.sampled_from(KEYS), st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300))
headers = st.lists(header, max_size=3)


def call(channel: grpc.Channel, method: tuple[str, bool, bool], body: bytes, md: list[tuple[str, str]]) -> grpc.StatusCode:
    path, client_stream, server_stream = method
    md = [(k, v.encode()) if k.endswith("-bin") else (k, v) for k, v in md]  # type: ignore[misc]
    timeout = 0.5 if server_stream else 10  # a valid Health.Watch streams until the deadline
    try:
        if client_stream and server_stream:
            for _ in channel.stream_stream(path)(iter([body]), metadata=md, timeout=timeout):
                pass
        elif server_stream:
            for _ in channel.unary_stream(path)(body, metadata=md, timeout=timeout):
                pass
        else:
            channel.unary_unary(path)(body, metadata=md, timeout=timeout)
    except grpc.RpcError as e:
        return e.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


def check_survives(channel: grpc.Channel, targets: list[tuple[str, bool, bool]], seed_list: list[bytes],
                   alive) -> None:  # type: ignore[no-untyped-def]
    seen: dict[str, set[str]] = {}

    @FUZZ
    @given(method=st.sampled_from(targets), body=st.one_of(st.binary(max_size=512), mutated(seed_list)), md=headers)
    def probe(method, body, md) -> None:  # type: ignore[no-untyped-def]
        code = call(channel, method, body, md)
        seen.setdefault(method[0], set()).add(code.name)
        assert code not in SERVER_FAULTS, f"{method[0]} answered {code.name} to {body[:80]!r} with headers {md}"
        assert alive(), "the server process died"

    probe()
    assert len(seen) >= len(targets) // 2, f"only {len(seen)} of {len(targets)} methods were tried"


def good_infer(channel: grpc.Channel, model_id: str, md=()) -> bool:  # type: ignore[no-untyped-def]
    x = modelgen.sample_input(SPEC, batch=1)
    raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(_infer(model_id), metadata=md, timeout=60)
    resp = v2.ModelInferResponse.FromString(raw)
    out = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(list(resp.outputs[0].shape))
    return bool(np.allclose(out, modelgen.reference_output(SPEC, x), rtol=1e-4, atol=1e-5))


@pytest.fixture(scope="module")
def fuzz_mesh(etcd_server, tmp_path_factory) -> Iterator[tuple[RuntimeProc, RouterProc, Path]]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("fuzz-models")
    model = modelgen.write_onnx_mlp(SPEC, root / "m.onnx")
    mesh = f"fz-{uuid.uuid4().hex[:8]}"
    rt = start_runtime(etcd_server.endpoint, mesh, capacity="32Mi", env={"MESHSERVE_MODEL_TYPES": "onnx"},
                       extra_args=["--model-roots", str(root), "--instance-id", "fuzz-rt"])
    router = start_router(etcd_server.endpoint, mesh)  # with a REST port
    try:
        ch = grpc.insecure_channel(router.endpoint)
        ok = mm.ModelStatusInfo.FromString(ch.unary_unary("/mmesh.ModelMesh/registerModel")(
            mm.RegisterModelRequest(modelId="good", modelInfo=mm.ModelInfo(type="onnx", path=str(model)),
                                    loadNow=True, sync=True).SerializeToString(), timeout=60))
        assert ok.status == mm.ModelStatusInfo.LOADED, ok
        yield rt, router, model
    finally:
        router.stop()
        rt.kill()


def test_fuzzed_router_methods_answer_precise_codes_and_keep_serving(fuzz_mesh) -> None:  # type: ignore[no-untyped-def]
    rt, router, model = fuzz_mesh
    targets = methods(mm.DESCRIPTOR.services_by_name["ModelMesh"], adm.DESCRIPTOR.services_by_name["MeshAdmin"],
                      v2.DESCRIPTOR.services_by_name["GRPCInferenceService"])
    targets += _plain(f"/{HEALTH}/Check") + [(f"/{HEALTH}/Watch", False, True),
                                              (f"/{REFLECTION}/ServerReflectionInfo", True, True)]
    channel = grpc.insecure_channel(router.endpoint)
    check_survives(channel, targets, seeds(model), lambda: router.process.poll() is None)
    assert good_infer(channel, "good")


def test_fuzzed_runtime_methods_answer_precise_codes_and_keep_serving(fuzz_mesh) -> None:  # type: ignore[no-untyped-def]
    rt, router, model = fuzz_mesh
    targets = methods(spi.DESCRIPTOR.services_by_name["ModelRuntime"],
                      v2.DESCRIPTOR.services_by_name["GRPCInferenceService"])
    targets += _plain(f"/{HEALTH}/Check") + [(f"/{REFLECTION}/ServerReflectionInfo", True, True)]
    channel = grpc.insecure_channel(rt.endpoint)
    check_survives(channel, targets, seeds(model), lambda: rt.running)
    assert good_infer(grpc.insecure_channel(router.endpoint), "good")


@pytest.mark.parametrize("service", ["mmesh.ModelMesh", "meshserve.v1.MeshAdmin"])
def test_undecodable_management_messages_are_invalid_argument_on_every_method(fuzz_mesh, service: str) -> None:  # type: ignore[no-untyped-def]
    _, router, _ = fuzz_mesh
    svc = (mm if service.startswith("mmesh") else adm).DESCRIPTOR.services_by_name[service.rpartition(".")[2]]
    channel = grpc.insecure_channel(router.endpoint)
    for m in svc.methods:
        for body in (b"\xff\xff\xff", b"\x0a\x05ab", b"\x08"):  # bad tag, truncated string, truncated varint
            with pytest.raises(grpc.RpcError) as err:
                channel.unary_unary(f"/{service}/{m.name}")(body, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (m.name, body, err.value)
            assert m.input_type.full_name in err.value.details()


DATATYPES = ["FP32", "FP32", "FP32", "FP16", "INT64", "INT8", "BOOL", "BYTES", "BF16", "", "NOPE"]
#: Edge dimensions (the model's 16, zero, -1, overflowing products) beside random ones.
EDGE_DIMS = [1, 16, 0, -1, 2**31, 2**32, 2**60, 2**63 - 1, -(2**63)]
dim = st.one_of(st.sampled_from(EDGE_DIMS), st.integers(-3, 40), st.integers(-(2**63), 2**63 - 1))
#: Half the shapes are the model's rank ([batch, 16]) so the size checks behind the rank check run.
dims = st.one_of(st.tuples(dim, st.sampled_from([16, 16, 0, -1, 2**60])).map(list), st.lists(dim, max_size=4))


@st.composite
def infer_requests(draw) -> bytes:  # type: ignore[no-untyped-def]
    """Well-formed ModelInferRequests with wrong names, datatypes, shapes, sizes and counts."""
    req = v2.ModelInferRequest(model_name=draw(st.sampled_from(["good", "good", "", "nope", "good/../x"])))
    raw = draw(st.booleans())
    for _ in range(draw(st.sampled_from([1, 1, 1, 0, 2, 3]))):
        t = req.inputs.add(name=draw(st.sampled_from(["INPUT0", "INPUT0", "INPUT1", ""])),
                           datatype=draw(st.sampled_from(DATATYPES)), shape=draw(dims))
        if raw:
            req.raw_input_contents.append(draw(st.one_of(st.just(b""), st.binary(max_size=256))))
        else:
            t.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=40)))
            t.contents.int64_contents.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3)))
    for name in draw(st.lists(st.sampled_from(["OUTPUT0", "nope", ""]), max_size=2)):
        req.outputs.add(name=name)
    return req.SerializeToString()


def overflowing(shape: list[int]) -> bytes:
    req = v2.ModelInferRequest(model_name="good")
    req.inputs.add(name="INPUT0", datatype="FP32", shape=shape)
    req.raw_input_contents.append(b"")
    return req.SerializeToString()


@pytest.mark.parametrize("target", ["router", "runtime"])
def test_fuzzed_tensors_are_invalid_argument_never_internal(fuzz_mesh, target: str) -> None:  # type: ignore[no-untyped-def]
    rt, router, _ = fuzz_mesh
    channel = grpc.insecure_channel(router.endpoint if target == "router" else rt.endpoint)
    method = ("/inference.GRPCInferenceService/ModelInfer", False, False)

    @FUZZ
    @given(body=infer_requests())
    @example(body=overflowing([2**60, 16]))  # int64 products wrap to 0 bytes: found by this test
    @example(body=overflowing([2**62, 16]))
    @example(body=overflowing([2**63 - 1, 16]))
    def probe(body: bytes) -> None:
        code = call(channel, method, body, [("mm-model-id", "good")] if target == "runtime" else [])
        assert code not in SERVER_FAULTS, f"{code.name} for {v2.ModelInferRequest.FromString(body)}"

    probe()
    assert good_infer(grpc.insecure_channel(router.endpoint), "good")



def test_limits_are_refused_with_clear_messages(fuzz_mesh) -> None:  # type: ignore[no-untyped-def]
    rt, router, model = fuzz_mesh
    mesh = router.process.args[router.process.args.index("--mesh") + 1]  # type: ignore[union-attr]
    etcd = router.process.args[router.process.args.index("--etcd") + 1]  # type: ignore[union-attr]
    with start_router(etcd, mesh, env={"MESHSERVE_MAX_MESSAGE_BYTES": "1Mi"}) as small:
        channel = grpc.insecure_channel(small.endpoint, options=[("grpc.max_send_message_length", 2**25)])
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        req = v2.ModelInferRequest(model_name="good")
        req.inputs.add(name="INPUT0", datatype="FP32", shape=[2**15, 16])
        req.raw_input_contents.append(b"\0" * (2**15 * 16 * 4))  # 2 MiB
        with pytest.raises(grpc.RpcError) as err:
            infer(req.SerializeToString(), timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in err.value.details()
        # Headers past gRPC's limit (16 KiB soft, 20 KiB hard here too).
        with pytest.raises(grpc.RpcError) as err:
            infer(_infer("good"), metadata=(("x-big", "a" * 65536),), timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "metadata size" in err.value.details()
        assert good_infer(channel, "good")
    channel = grpc.insecure_channel(router.endpoint)
    register = channel.unary_unary("/mmesh.ModelMesh/registerModel")
    with pytest.raises(grpc.RpcError) as err:
        register(mm.RegisterModelRequest(modelId="x" * 300, modelInfo=mm.ModelInfo(type="onnx", path=str(model)))
                 .SerializeToString(), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "the limit is 256" in err.value.details()
    req = v2.ModelInferRequest(model_name="good")
    req.inputs.add(name="INPUT0", datatype="FP32", shape=[2**28, 16])
    req.raw_input_contents.append(b"")
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(req.SerializeToString(), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "the limit is 2147483648" in err.value.details()


REST_PATHS = ["/v2/models/good/infer", "/v1/models/good:predict", "/v2/models/good", "/v2/models/good/ready",
              "/v2", "/v2/health/ready", "/v1/models", "/v2/models/%ff/infer", "/v2/models/../x/infer", "/"]
json_values = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=8),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=20)


@st.composite
def rest_bodies(draw) -> bytes:  # type: ignore[no-untyped-def]
    import json as _json

    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=300))
    if kind == 1:  # V2-shaped JSON with wrong pieces
        t = {"name": draw(st.sampled_from(["INPUT0", "x", ""])), "datatype": draw(st.sampled_from(DATATYPES)),
             "shape": draw(dims), "data": draw(json_values)}
        return _json.dumps({"inputs": draw(st.sampled_from([[t], [], t, None]))}, allow_nan=True).encode()
    if kind == 2:  # deeply nested JSON
        depth = draw(st.integers(50, 3000))
        return b"[" * depth + b"]" * depth
    return _json.dumps(draw(json_values), allow_nan=True).encode()


def test_fuzzed_rest_requests_get_4xx_never_5xx_and_the_router_keeps_serving(fuzz_mesh) -> None:  # type: ignore[no-untyped-def]
    import http.client

    _, router, _ = fuzz_mesh
    log = router.log()
    rest = next(line.split("REST on ")[1].split()[0].rstrip(")") for line in log.splitlines() if "REST on" in line)
    host, port = rest.rsplit(":", 1)
    seen: set[int] = set()

    @FUZZ
    @given(method=st.sampled_from(["POST", "GET", "PUT", "DELETE"]), path=st.sampled_from(REST_PATHS), body=rest_bodies(),
           ctype=st.sampled_from(["application/json", "application/octet-stream", "text/plain", ""]),
           extra=st.dictionaries(st.sampled_from(["Inference-Header-Content-Length", "X-Fuzz", "Authorization"]),
                                 st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=12), max_size=2))
    def probe(method: str, path: str, body: bytes, ctype: str, extra: dict[str, str]) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            headers = {**({"Content-Type": ctype} if ctype else {}), **extra}
            conn.request(method, path, body=body if method in ("POST", "PUT") else None, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
        finally:
            conn.close()
        seen.add(resp.status)
        # 503 is a real state (no runtime can take a load); 500 would be a server fault.
        assert resp.status < 500 or resp.status == 503, f"{method} {path} {body[:80]!r} -> {resp.status} {payload[:200]!r}"
        assert router.process.poll() is None

    probe()
    assert any(400 <= c < 500 for c in seen), seen
    assert good_infer(grpc.insecure_channel(router.endpoint), "good")
