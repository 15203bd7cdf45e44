"""``mmesh.ModelRuntime``: the ModelMesh runtime SPI (load, unload, sizes, status).

Contract notes (reference/modelmesh-wire.md):

- loadModel answers with the charged size (max of predicted and measured) once
  the model serves and its LOADED copy key is written (bounded wait). Requests
  rejected without attempting a load: empty/invalid id, unknown model type,
  empty path (INVALID_ARGUMENT); shutting down (UNAVAILABLE).
- unloadModel succeeds when the model is not loaded; it also cancels a load in
  progress, and returns only when that load's memory is dropped.
- runtimeStatus: ModelMesh's runtime belonged to one mesh container and purged
  every model when polled at start-up. Here several routers share a runtime that
  owns its state, so a purge of loaded models would drop other routers' copies;
  what it purges before READY is what no router can know about: copy keys a
  previous process with this instance id left (at start) and the threads of
  cancelled loads still running (their models are dropped first, bounded wait).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from mesh.grpc_errors import translate_errors
from mesh.proto.mmesh import model_runtime_pb2 as pb
from mesh.registry.ids import validate_id
from mesh.runtime.loader import ModelManager

SERVICE = pb.DESCRIPTOR.services_by_name["ModelRuntime"]
INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
#: Field 1 of ModelInferRequest / ModelMetadataRequest holds the model name.
ID_INJECTION_PATH = [1]


#: Request header a router sets on loadModel when no eligible runtime had room:
#: the load may evict, but the eviction policy's churn guard applies.
MESH_FULL_HEADER = "meshserve-mesh-full"


def mesh_full(context: grpc.aio.ServicerContext) -> bool:
    return any(k == MESH_FULL_HEADER and v in ("1", "true") for k, v in context.invocation_metadata() or ())


class ModelRuntimeServicer:
    def __init__(
        self,
        manager: ModelManager,
        *,
        version: str,
        ready: Callable[[], bool],
        flush_copy: Callable[[str], Awaitable[Any]],
        settle_timeout_s: float = 10.0,
    ) -> None:
        self._manager = manager
        self._version = version
        self._ready = ready
        self._flush = flush_copy
        self._settle_timeout = settle_timeout_s

    def handler(self) -> grpc.GenericRpcHandler:
        from mesh.runtime.grpc_service import protobuf_service

        return protobuf_service(SERVICE, {
            "loadModel": self.loadModel, "unloadModel": self.unloadModel,
            "predictModelSize": self.predictModelSize, "modelSize": self.modelSize,
            "runtimeStatus": self.runtimeStatus,
        })

    @translate_errors
    async def loadModel(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        size = await self._manager.load(request.modelId, request.modelType, request.modelPath, request.modelKey,
                                        mesh_full=mesh_full(context))
        await self._flush(request.modelId)
        return pb.LoadModelResponse(sizeInBytes=size)

    @translate_errors
    async def unloadModel(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        if await self._manager.unload(request.modelId):
            await self._flush(request.modelId)
        return pb.UnloadModelResponse()

    @translate_errors
    async def predictModelSize(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        size = await self._manager.predict(request.modelId, request.modelType, request.modelPath)
        return pb.PredictModelSizeResponse(sizeInBytes=size)

    @translate_errors
    async def modelSize(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        from mesh.errors import NotFound

        size = self._manager.size_of(validate_id(request.modelId))
        if not size:
            raise NotFound(f"model {request.modelId!r} is not loaded on this runtime")
        return pb.ModelSizeResponse(sizeInBytes=size)

    @translate_errors
    async def runtimeStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        if not self._ready():
            return pb.RuntimeStatusResponse(status=pb.RuntimeStatusResponse.STARTING)
        await self._manager.settle(self._settle_timeout)
        s = self._manager.settings
        resp = pb.RuntimeStatusResponse(
            status=pb.RuntimeStatusResponse.READY,
            capacityInBytes=self._manager.cache.capacity,
            maxLoadingConcurrency=s.max_loading_concurrency,
            # The base timeout; a runtime allows more for big models (per-GB term).
            modelLoadingTimeoutMs=int(s.load_timeout_base_s * 1000),
            defaultModelSizeInBytes=s.default_model_size,
            runtimeVersion=self._version,
            limitModelConcurrency=False,
            allowAnyMethod=False,
        )
        resp.methodInfos[INFER_METHOD].idInjectionPath.extend(ID_INJECTION_PATH)
        return resp
