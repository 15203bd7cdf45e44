"""A failed load, as a client sees it: the model is LOADING_FAILED with the reason from
the first failure on, and the request that met the failure gets the error's own code
(gRPC) and matching status (REST), never INTERNAL / 500.

| cause | gRPC | REST |
|---|---|---|
| a file that is not a loadable model | FAILED_PRECONDITION | 503 |
| storage unreachable | UNAVAILABLE | 503 |

Real etcd, one real runtime process, an in-process router serving gRPC and REST.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from tritonclient.grpc import service_pb2 as v2

from mesh.etcd_server import free_port
from mesh.proto.mmesh import model_mesh_pb2 as mm
from router.server import RouterServer
from tests.test_e2e import SPEC, Client, start_router
from tests.test_e2e import client  # noqa: F401 - the fixture (over this module's router)
from tests.test_unload_during_load import runtime  # noqa: F401 - the fixture: one ONNX runtime

MS = mm.ModelStatusInfo
REST_BODY = {"inputs": [{"name": "INPUT0", "shape": [1, SPEC.in_dim], "datatype": "FP32",
                         "data": [0.0] * SPEC.in_dim}]}


@pytest.fixture
async def router(etcd_server, mesh_name, runtime) -> AsyncIterator[RouterServer]:
    r = await start_router(etcd_server, mesh_name, 1, rest_listen="127.0.0.1:0")
    yield r
    await r.stop(0)


async def _register(client: Client, model_id: str, path: str) -> None:
    await client.mesh.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=mm.ModelInfo(
        type="onnx", path=path)))


async def _first_failure(client: Client, model_id: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.infer(model_id, SPEC)
    return err.value


async def _runtime_ready(runtime) -> bool:
    async with grpc.aio.insecure_channel(runtime.endpoint) as ch:
        call = ch.unary_unary("/inference.GRPCInferenceService/ServerReady",
                              request_serializer=v2.ServerReadyRequest.SerializeToString,
                              response_deserializer=v2.ServerReadyResponse.FromString)
        return bool((await call(v2.ServerReadyRequest(), timeout=10)).ready)


async def test_a_corrupt_model_is_loading_failed_at_once_and_answers_failed_precondition_and_503(
        client: Client, router: RouterServer, runtime, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(os.urandom(20_000))
    await _register(client, "corrupt", str(corrupt))
    err = await _first_failure(client, "corrupt")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not a loadable ONNX model" in err.details() and "corrupt.onnx" in err.details()
    st = await client.mesh.getModelStatus(mm.GetStatusRequest(modelId="corrupt"))
    assert st.status == MS.LOADING_FAILED  # after one failure, not three
    assert len(st.errors) == 1 and runtime.instance_id in st.errors[0] and "not a loadable ONNX model" in st.errors[0]
    assert await _runtime_ready(runtime)
    async with aiohttp.ClientSession(f"http://{router.rest_endpoint}") as http:
        async with http.post("/v2/models/corrupt/infer", json=REST_BODY) as r:
            body = await r.json()
            assert r.status == 503, body
            # A retry (the retry policy allows max_load_failures), failing the same way.
            assert "corrupt.onnx" in body["error"] and "not a loadable ONNX model" in body["error"]


async def test_unreachable_storage_is_loading_failed_at_once_and_answers_unavailable_and_503(
        client: Client, router: RouterServer, runtime) -> None:
    url = f"http://127.0.0.1:{free_port()}/m.onnx"  # nothing listens there
    await _register(client, "unreachable", url)
    err = await _first_failure(client, "unreachable")
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "cannot reach" in err.details() and "'unreachable'" in err.details()
    st = await client.mesh.getModelStatus(mm.GetStatusRequest(modelId="unreachable"))
    assert st.status == MS.LOADING_FAILED
    assert len(st.errors) == 1 and "cannot reach" in st.errors[0]
    assert await _runtime_ready(runtime)
    await _register(client, "unreachable-rest", url)
    async with aiohttp.ClientSession(f"http://{router.rest_endpoint}") as http:
        async with http.post("/v2/models/unreachable-rest/infer", json=REST_BODY) as r:
            body = await r.json()
            assert r.status == 503, body
            assert "cannot reach" in body["error"]
