"""unloadModel (or unregisterModel) while a load runs: whoever waits on the load gets a
prompt, clear answer instead of waiting out its deadline.

- the runtime's loadModel: ABORTED, "cancelled by an unload", nothing kept;
- the router: a request waiting on the load of a model that was unregistered meanwhile
  gets NOT_FOUND naming the model and saying it was unregistered while loading.

Real etcd, a real runtime process, an in-process router; the model's storage is an HTTP
server that takes the request and never answers, so the load is in progress for as long
as the test needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.proto.mmesh import model_runtime_pb2 as rpb
from mesh.proto.mmesh import model_runtime_pb2_grpc as rpg
from tests.procs import start_runtime
from tests.test_e2e import SPEC, Client, start_router

#: Far beyond how long an answer may take: a hang shows as a failure, not a slow pass.
PROMPT_S = 20.0
DEADLINE_S = 120.0


class StalledStorage:
    """An HTTP server that reads each request and never answers."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self._release = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        self.requested.set()
        await self._release.wait()
        writer.close()

    async def __aenter__(self) -> StalledStorage:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/model.onnx"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        assert self._server is not None
        self._server.close()


@pytest.fixture
async def storage() -> AsyncIterator[StalledStorage]:
    async with StalledStorage() as s:
        yield s


@pytest.fixture
def runtime(etcd_server, mesh_name):
    proc = start_runtime(etcd_server.endpoint, mesh_name, capacity=50_000_000,
                         env={"MESHSERVE_MODEL_TYPES": "onnx", "MESHSERVE_LEASE_TTL_S": "3"})
    yield proc
    proc.kill()


async def test_runtime_loadmodel_answers_aborted_when_an_unload_cancels_it(runtime, storage) -> None:
    async with grpc.aio.insecure_channel(runtime.endpoint) as ch:
        spi = rpg.ModelRuntimeStub(ch)
        load = asyncio.ensure_future(spi.loadModel(rpb.LoadModelRequest(
            modelId="slow", modelType="onnx", modelPath=storage.url), timeout=DEADLINE_S))
        await asyncio.wait_for(storage.requested.wait(), PROMPT_S)
        await spi.unloadModel(rpb.UnloadModelRequest(modelId="slow"), timeout=PROMPT_S)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(load, PROMPT_S)
        assert err.value.code() == grpc.StatusCode.ABORTED
        assert "'slow'" in err.value.details() and "unload" in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as size:
            await spi.modelSize(rpb.ModelSizeRequest(modelId="slow"), timeout=PROMPT_S)
        assert size.value.code() == grpc.StatusCode.NOT_FOUND  # nothing kept


async def test_a_request_waiting_on_a_load_gets_not_found_when_the_model_is_unregistered(
        etcd_server, mesh_name, runtime, storage) -> None:
    router = await start_router(etcd_server, mesh_name, 1)
    client = Client(router.endpoint)
    try:
        await client.mesh.registerModel(mm.RegisterModelRequest(
            modelId="slow", modelInfo=mm.ModelInfo(type="onnx", path=storage.url)))
        waiting = asyncio.ensure_future(client.mesh.ensureLoaded(
            mm.EnsureLoadedRequest(modelId="slow", sync=True), timeout=DEADLINE_S))
        inferring = asyncio.ensure_future(client.infer("slow", SPEC))
        await asyncio.wait_for(storage.requested.wait(), PROMPT_S)
        await client.mesh.unregisterModel(mm.UnregisterModelRequest(modelId="slow"), timeout=PROMPT_S)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(inferring, PROMPT_S)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "'slow'" in err.value.details() and "unregistered while" in err.value.details()
        status = await asyncio.wait_for(waiting, PROMPT_S)
        assert status.status == mm.ModelStatusInfo.NOT_FOUND
    finally:
        await client.channel.close()
        await router.stop(0)

