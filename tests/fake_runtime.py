"""A fake runtime for router tests: the real SPI and V2 interfaces, a toy model.

It registers an instance record and copy keys under a lease exactly as the real
runtime does, holds at most ``capacity_models`` models (LRU), and answers
ModelInfer by echoing the request's raw input and naming the model and instance
that served it. Tests can slow loads down or make some fail.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

import grpc
from tritonclient.grpc import service_pb2 as v2
from tritonclient.grpc import service_pb2_grpc as v2_grpc

from mesh.proto.mmesh import model_runtime_pb2 as spi
from mesh.proto.mmesh import model_runtime_pb2_grpc as spi_grpc
from mesh.registry import records as rec
from mesh.registry.registry import Registry

MODEL_SIZE = 1000


class FakeRuntime(spi_grpc.ModelRuntimeServicer, v2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, registry: Registry, instance_id: str, *, capacity_models: int = 10,
                 load_delay_s: float = 0.0, lease_ttl_s: int = 5) -> None:
        self.registry = registry
        self.instance_id = instance_id
        self.capacity_models = capacity_models
        self.load_delay_s = load_delay_s
        self.lease_ttl_s = lease_ttl_s
        self.fail_models: dict[str, str] = {}
        self.loads: dict[str, int] = {}
        #: Models whose loadModel said the mesh was full (the churn-guard header).
        self.mesh_full_loads: list[str] = []
        self.infers = 0
        self.loaded: OrderedDict[str, None] = OrderedDict()
        self.lease = 0
        self.endpoint = ""
        self._server: grpc.aio.Server | None = None
        self._keepalive: asyncio.Task[None] | None = None
        #: Evicted here but copy key not deleted yet (as a real runtime's key write in flight).
        self.evicting: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = grpc.aio.server()
        spi_grpc.add_ModelRuntimeServicer_to_server(self, self._server)
        v2_grpc.add_GRPCInferenceServiceServicer_to_server(self, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self.endpoint = f"127.0.0.1:{port}"
        self.lease = await self.registry.store.grant_lease(self.lease_ttl_s)
        await self._publish()
        self._keepalive = asyncio.get_running_loop().create_task(self._keep())

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl_s / 3)
            await self.registry.store.refresh_lease(self.lease)

    async def _publish(self) -> None:
        await self.registry.put_instance(rec.InstanceRecord(
            self.instance_id, self.endpoint, lease_id=self.lease,
            capacity_bytes=self.capacity_models * MODEL_SIZE, used_bytes=len(self.loaded) * MODEL_SIZE,
            model_count=len(self.loaded), model_types=("onnx", "pytorch"),
            start_ms=int(time.time() * 1000)), lease=self.lease)

    def evict_quietly(self, model_id: str) -> None:
        """Drops a model without deleting its copy key yet: routers still see it LOADED
        until the next request for it here answers NOT_FOUND, after which the key goes."""
        self.loaded.pop(model_id, None)
        self.evicting.add(model_id)

    async def _finish_eviction(self, model_id: str) -> None:
        self.evicting.discard(model_id)
        await self.registry.delete_copy(model_id, self.instance_id)

    async def crash(self) -> None:
        """Stops answering at once, leaving its keys to expire with the lease."""
        if self._keepalive:
            self._keepalive.cancel()
        if self._server:
            await self._server.stop(None)

    async def stop(self) -> None:
        await self.crash()
        await self.registry.store.revoke_lease(self.lease)

    # -- SPI ------------------------------------------------------------

    async def loadModel(self, request, context):  # noqa: N802
        mid = request.modelId
        self.loads[mid] = self.loads.get(mid, 0) + 1
        if ("meshserve-mesh-full", "1") in tuple(context.invocation_metadata() or ()):
            self.mesh_full_loads.append(mid)
        await self.registry.put_copy(rec.CopyRecord(mid, self.instance_id, rec.LOADING), lease=self.lease)
        await asyncio.sleep(self.load_delay_s)
        if mid in self.fail_models:
            await self.registry.delete_copy(mid, self.instance_id)
            await context.abort(grpc.StatusCode.INTERNAL, self.fail_models[mid])
        while len(self.loaded) >= self.capacity_models:
            victim, _ = self.loaded.popitem(last=False)
            await self.registry.delete_copy(victim, self.instance_id)
        self.loaded[mid] = None
        await self.registry.put_copy(
            rec.CopyRecord(mid, self.instance_id, rec.LOADED, size_bytes=MODEL_SIZE), lease=self.lease)
        await self._publish()
        return spi.LoadModelResponse(sizeInBytes=MODEL_SIZE)

    async def unloadModel(self, request, context):  # noqa: N802
        if self.loaded.pop(request.modelId, 0) is None:
            await self.registry.delete_copy(request.modelId, self.instance_id)
            await self._publish()
        return spi.UnloadModelResponse()

    async def runtimeStatus(self, request, context):  # noqa: N802
        return spi.RuntimeStatusResponse(status=spi.RuntimeStatusResponse.READY,
                                         capacityInBytes=self.capacity_models * MODEL_SIZE)

    # -- V2 -------------------------------------------------------------

    async def ModelInfer(self, request, context):  # noqa: N802
        md = dict(context.invocation_metadata())
        mid = md.get("mm-model-id", request.model_name)
        if mid in self.evicting:
            task = asyncio.get_running_loop().create_task(self._finish_eviction(mid))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if mid not in self.loaded:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model '{mid}' is not loaded on runtime {self.instance_id}")
        self.loaded.move_to_end(mid)
        self.infers += 1
        if request.inputs and request.inputs[0].name == "BAD":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "input 'BAD' is not an input of the model")
        out = v2.ModelInferResponse(model_name=mid, id=self.instance_id)
        out.outputs.add(name="OUTPUT0", datatype="FP32", shape=list(request.inputs[0].shape) if request.inputs else [0])
        out.raw_output_contents.extend(request.raw_input_contents)
        return out

    async def ModelMetadata(self, request, context):  # noqa: N802
        mid = dict(context.invocation_metadata()).get("mm-model-id", request.name)
        if mid not in self.loaded:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model '{mid}' is not loaded on runtime {self.instance_id}")
        return v2.ModelMetadataResponse(name=mid, platform="fake")
