"""The REST codecs and URL parsing on their own (no servers): the cases that
are awkward to reach end to end."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest
from tritonclient.grpc import service_pb2 as pb

from mesh.errors import InvalidArgument, MessageTooLarge, ModelLoadingFailed, NotFound, Unimplemented
from router.rest import tensors, v1, v2
from router.rest.app import parse_timeout
from router.rest.errors import http_status
from router.rest.paths import Route, route


@pytest.mark.parametrize("raw,expected", [
    ("/v1/models", Route("v1_list", "GET")),
    ("/v1/models/", Route("v1_list", "GET")),
    ("/v1/models/a%2Fb%3Ac%40d", Route("v1_model", "GET", "a/b:c@d")),
    ("/v1/models/a/b:c:predict?x=1", Route("v1_predict", "POST", "a/b:c")),
    ("/v1/models/a%3Apredict:predict", Route("v1_predict", "POST", "a:predict")),
    ("/v2", Route("v2_server", "GET")),
    ("/v2/health/live", Route("v2_live", "GET")),
    ("/v2/models/a%2Fversions%2F1/infer", Route("v2_infer", "POST", "a/versions/1")),
    ("/v2/models/a/b/versions/3/infer", Route("v2_infer", "POST", "a/b", "3")),
    ("/v2/models/m/versions/3/ready", Route("v2_model_ready", "GET", "m", "3")),
    ("/v2/models/m%40x", Route("v2_metadata", "GET", "m@x")),
    ("/v2/models/m/versions/2", Route("v2_metadata", "GET", "m", "2")),
])
def test_routes_decode_names_after_splitting(raw: str, expected: Route) -> None:
    assert route(raw) == expected


def test_route_errors() -> None:
    with pytest.raises(NotFound, match="no endpoint at '/v3'"):
        route("/v3")
    with pytest.raises(InvalidArgument, match="names no model"):
        route("/v2/models//infer")
    with pytest.raises(InvalidArgument, match="not valid percent-encoded UTF-8"):
        route("/v2/models/%ff/infer")
    with pytest.raises(Unimplemented, match="explain"):
        route("/v1/models/m:explain")


def test_timeouts_and_statuses() -> None:
    assert parse_timeout("2.5", "t") == 2.5 and parse_timeout("500ms", "t") == 0.5 and parse_timeout("1m", "t") == 60
    with pytest.raises(InvalidArgument, match="not a positive duration"):
        parse_timeout("soon", "t")
    assert http_status(ModelLoadingFailed("x")) == 503 and http_status(MessageTooLarge("x")) == 413
    assert http_status(InvalidArgument("x")) == 400 and http_status(NotFound("x")) == 404


def test_json_data_is_checked_not_cast() -> None:
    assert tensors.array_from_json([[1, 2], [3, 4]], "INT8", "f").dtype == np.int8
    for data, dt, msg in (([300], "INT8", "outside the range of INT8"), ([-1], "UINT8", "outside the range"),
                          ([2], "BOOL", "true/false"), ([1.5], "INT64", "whole numbers"),
                          ([None], "FP32", "mixed values"), (["x"], "FP32", "strings")):
        with pytest.raises(InvalidArgument, match=msg):
            tensors.array_from_json(data, dt, "f")
    assert tensors.array_from_json([1.0, 2.0], "BF16", "f").dtype.name == "bfloat16"


def test_bytes_tensors_are_length_prefixed_both_ways() -> None:
    raw, n = tensors.encode_bytes([["ab", "c"], ["", "dé"]], "f")
    assert n == 4 and raw[:6] == struct.pack("<I", 2) + b"ab"
    assert tensors.decode_bytes(raw, "f") == [b"ab", b"c", b"", "dé".encode()]
    assert tensors.array_from_raw(raw, "BYTES", (2, 2), "f") == [["ab", "c"], ["", "dé"]]
    with pytest.raises(InvalidArgument, match="runs past the end"):
        tensors.decode_bytes(struct.pack("<I", 9) + b"abc", "f")
    req = v2.decode_request(orjson.dumps({"inputs": [{"name": "S", "shape": [2], "datatype": "BYTES",
                                                      "data": ["x", "yz"]}]}), None, "m", "")
    msg = pb.ModelInferRequest.FromString(req.message)
    assert msg.inputs[0].datatype == "BYTES" and msg.raw_input_contents[0] == raw_of(["x", "yz"])


def raw_of(items: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(s.encode())) + s.encode() for s in items)


def test_v2_response_mixes_binary_and_json_outputs() -> None:
    resp = pb.ModelInferResponse(model_name="m", model_version="1", id="q")
    a, b = np.arange(4, dtype=np.float32), np.array([1, 2], dtype=np.int64)
    for name, arr, dt in (("A", a, "FP32"), ("B", b, "INT64")):
        resp.outputs.add(name=name, datatype=dt, shape=list(arr.shape))
        resp.raw_output_contents.append(arr.tobytes())
    req = v2.InferRequest(b"", binary_outputs={"A": True}, binary_default=False)
    body, n = v2.encode_response(resp.SerializeToString(), req)
    assert n is not None
    head = orjson.loads(body[:n])
    assert head["id"] == "q" and head["outputs"][0]["parameters"] == {"binary_data_size": 16}
    assert head["outputs"][1]["data"] == [1, 2] and body[n:] == a.tobytes()
    # V1: several outputs sharing a batch become one object per row.
    resp2 = pb.ModelInferResponse(model_name="m")
    for name, arr, dt in (("A", a.reshape(2, 2), "FP32"), ("B", b, "INT64")):
        resp2.outputs.add(name=name, datatype=dt, shape=list(arr.shape))
        resp2.raw_output_contents.append(arr.tobytes())
    assert orjson.loads(v1.encode_predictions(resp2.SerializeToString())) == {
        "predictions": [{"A": [0.0, 1.0], "B": 1}, {"A": [2.0, 3.0], "B": 2}]}


def test_router_command_serves_rest_on_8008_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    from mesh.cli import build_parser
    from mesh.cli.router_cmd import settings_from

    def rest(*argv: str) -> str:
        return settings_from(build_parser().parse_args(["router", *argv])).rest_listen

    monkeypatch.delenv("MESHSERVE_REST_LISTEN", raising=False)
    assert rest() == "0.0.0.0:8008"
    assert rest("--rest-listen", "127.0.0.1:9000") == "127.0.0.1:9000"
    assert rest("--rest-listen", "") == ""
    monkeypatch.setenv("MESHSERVE_REST_LISTEN", "")
    assert rest() == ""
    monkeypatch.setenv("MESHSERVE_REST_LISTEN", "10.0.0.1:8080")
    assert rest() == "10.0.0.1:8080"
    with pytest.raises(InvalidArgument, match="rest-listen"):
        rest("--rest-listen", "nope")


class CountingForwarder:
    """The part of router.forward.Forwarder that InferenceCore calls: answers ModelMetadata."""

    def __init__(self) -> None:
        self.calls = 0

    async def forward(self, method: str, body: bytes, metadata: object, timeout_s: float) -> bytes:
        self.calls += 1
        resp = pb.ModelMetadataResponse(name="m", versions=["1"], platform="onnxruntime_onnx")
        resp.inputs.add(name="INPUT0", datatype="FP32", shape=[-1, self.calls])
        return resp.SerializeToString()


async def test_signatures_are_memoized_until_the_copy_or_registration_changes_or_ttl() -> None:
    from mesh.clock import FakeClock
    from mesh.registry import records as rec
    from mesh.registry.keys import KeySchema
    from mesh.registry.memory_store import MemoryStore
    from mesh.registry.mirror import RegistryMirror
    from mesh.registry.registry import Registry
    from router.core import InferenceCore
    from router.table import RoutingTable

    clock = FakeClock()
    store = MemoryStore(clock=clock)
    await store.start()
    keys = KeySchema("memo")
    registry, mirror = Registry(store, keys), RegistryMirror(store, keys)
    await mirror.start()
    fwd = CountingForwarder()
    core = InferenceCore(fwd, RoutingTable(mirror, clock), clock, 60.0, metadata_ttl_s=300)  # type: ignore[arg-type]

    async def shape() -> list[int]:
        return list((await core.metadata("m")).inputs[0].shape)

    try:
        await mirror.wait_for(await registry.create_model(rec.ModelRecord("m", "onnx", path="/a")))
        assert await shape() == [-1, 1] and await shape() == [-1, 1] and fwd.calls == 1
        lease = await store.grant_lease(3600)  # outlives the clock jumps below
        await mirror.wait_for(await registry.put_copy(rec.CopyRecord("m", "rt0", rec.LOADED, since_ms=5), lease=lease))
        assert await shape() == [-1, 2] and await shape() == [-1, 2]  # a new copy: asked once more
        clock.advance(301)
        assert await shape() == [-1, 3]  # the TTL
        await mirror.wait_for(await registry.put_model(rec.ModelRecord("m", "onnx", path="/b")))
        assert await shape() == [-1, 4] and fwd.calls == 4  # re-registered
    finally:
        await mirror.stop()
        await store.close()


def test_v1_bytes_instances_keep_their_nesting() -> None:
    sig = pb.ModelMetadataResponse(name="t")
    sig.inputs.add(name="TEXT", datatype="BYTES", shape=[-1, 2])
    msg = pb.ModelInferRequest.FromString(v1.decode_predict(
        orjson.dumps({"instances": [["a", "b"], ["c", "dé"]]}), "t", sig))
    assert list(msg.inputs[0].shape) == [2, 2] and msg.raw_input_contents[0] == raw_of(["a", "b", "c", "dé"])
    with pytest.raises(InvalidArgument, match="rectangular"):
        v1.decode_predict(orjson.dumps({"instances": [["a", "b"], ["c"]]}), "t", sig)
    with pytest.raises(InvalidArgument, match="BYTES elements must be strings"):
        v1.decode_predict(orjson.dumps({"instances": [[1, 2]]}), "t", sig)


async def test_a_taken_rest_port_is_a_clear_error() -> None:
    import socket

    from router.rest.app import RestServer

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = RestServer(None, f"127.0.0.1:{port}", 1024, "0")  # type: ignore[arg-type]  # binds only
        with pytest.raises(OSError, match=f"cannot listen for REST on 127.0.0.1:{port}: .*address already in use"):
            await server.start()
