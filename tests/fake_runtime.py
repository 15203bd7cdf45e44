"""A fake runtime for router tests: the real SPI and V2 interfaces, a toy model.

Its instance record and copy keys are written by the real runtime's
registration code (``mesh.runtime.registration.Registration``: one lease,
LOADING -> LOADED -> deleted, the record rewritten at most once a second), so
the router sees exactly what a real runtime would publish. It holds at most
``capacity_models`` models (LRU), and answers ModelInfer by echoing the
request's raw input and naming the model and instance that served it.

Knobs a test can turn, to force from the router's point of view what a real
runtime does under trouble:

- ``load_delay_s``, ``load_gate`` (an Event a load waits for), ``fail_models``
  (model -> message; answered FAILED_PRECONDITION, as a real runtime answers a
  file that is not a loadable model), ``load_errors`` (model, or ``"*"`` for every
  model -> (status code, message), e.g. RESOURCE_EXHAUSTED);
- ``infer_errors`` (model or ``"*"`` -> (code, message)), ``infer_gate``
  (an Event inference waits for), ``forget(model)`` (the copy vanishes from
  memory while its key stays, so the next request gets NOT_FOUND "not loaded").

It records what it saw: ``loads`` and ``infers`` per model, the remaining
deadline of each inference (``infer_deadlines``), and loads the router said
came from a full mesh (``mesh_full_loads``).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Mapping

import grpc
from tritonclient.grpc import service_pb2 as v2
from tritonclient.grpc import service_pb2_grpc as v2_grpc

from mesh.clock import SystemClock
from mesh.proto.mmesh import model_runtime_pb2 as spi
from mesh.proto.mmesh import model_runtime_pb2_grpc as spi_grpc
from mesh.registry import records as rec
from mesh.registry.registry import Registry
from mesh.runtime.registration import Registration, RuntimeStats

MODEL_SIZE = 1000
FLUSH_TIMEOUT_S = 10.0

Failure = tuple[grpc.StatusCode, str]


class FakeRuntime(spi_grpc.ModelRuntimeServicer, v2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, registry: Registry, instance_id: str, *, capacity_models: int = 10,
                 load_delay_s: float = 0.0, lease_ttl_s: int = 5, labels: Mapping[str, str] | None = None) -> None:
        self.registry = registry
        self.instance_id = instance_id
        self.capacity_models = capacity_models
        self.load_delay_s = load_delay_s
        self.lease_ttl_s = lease_ttl_s
        self.labels = dict(labels or {})
        self.fail_models: dict[str, str] = {}
        self.load_errors: dict[str, Failure] = {}
        self.infer_errors: dict[str, Failure] = {}
        self.load_gate: asyncio.Event | None = None
        self.infer_gate: asyncio.Event | None = None
        self.loads: dict[str, int] = {}
        #: Models whose loadModel said the mesh was full (the churn-guard header).
        self.mesh_full_loads: list[str] = []
        self.infers = 0
        self.infers_by_model: dict[str, int] = {}
        #: Seconds left of each inference's deadline when it arrived here.
        self.infer_deadlines: list[float | None] = []
        self.waiting_infers = 0
        self.loaded: OrderedDict[str, None] = OrderedDict()
        self.endpoint = ""
        self._server: grpc.aio.Server | None = None
        self._registration: Registration | None = None

    @property
    def lease(self) -> int:
        return self._registration.lease_id if self._registration else 0

    def _stats(self) -> RuntimeStats:
        return RuntimeStats(used_bytes=len(self.loaded) * MODEL_SIZE, model_count=len(self.loaded),
                            oldest_lru_ms=0, loads_in_progress=0)

    async def start(self) -> None:
        self._server = grpc.aio.server()
        spi_grpc.add_ModelRuntimeServicer_to_server(self, self._server)
        v2_grpc.add_GRPCInferenceServiceServicer_to_server(self, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self.endpoint = f"127.0.0.1:{port}"
        clock = SystemClock()
        base = rec.InstanceRecord(
            self.instance_id, self.endpoint, capacity_bytes=self.capacity_models * MODEL_SIZE,
            labels=dict(self.labels), model_types=("onnx", "pytorch"), start_ms=clock.now_ms())
        self._registration = Registration(self.registry, base, self._stats, lease_ttl_s=self.lease_ttl_s,
                                          clock=clock)
        await self._registration.start()

    async def crash(self) -> None:
        """Stops answering at once, leaving its keys to expire with the lease."""
        if self._server:
            await self._server.stop(None)
        if self._registration:
            await self._registration.stop(revoke=False)

    async def stop(self) -> None:
        if self._server:
            await self._server.stop(None)
        if self._registration:
            await self._registration.stop()

    def forget(self, model_id: str) -> None:
        """Drops a model from memory but leaves its LOADED copy key (a copy that vanished)."""
        self.loaded.pop(model_id, None)

    async def _publish(self, model_id: str) -> None:
        assert self._registration is not None
        self._registration.changed()
        await self._registration.flush_copy(model_id, FLUSH_TIMEOUT_S)

    @staticmethod
    def _failure(table: Mapping[str, Failure], model_id: str) -> Failure | None:
        return table.get(model_id) or table.get("*")

    # -- SPI ------------------------------------------------------------

    async def loadModel(self, request, context):  # noqa: N802
        reg = self._registration
        assert reg is not None
        mid = request.modelId
        self.loads[mid] = self.loads.get(mid, 0) + 1
        if ("meshserve-mesh-full", "1") in tuple(context.invocation_metadata() or ()):
            self.mesh_full_loads.append(mid)
        refused = self._failure(self.load_errors, mid)
        if refused:  # refused before anything is loaded, as a full runtime does
            await context.abort(*refused)
        reg.loading(mid)
        await self._publish(mid)
        if self.load_gate is not None:
            await self.load_gate.wait()
        await asyncio.sleep(self.load_delay_s)
        if mid in self.fail_models:
            reg.removed(mid)
            await self._publish(mid)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, self.fail_models[mid])
        while len(self.loaded) >= self.capacity_models:
            victim, _ = self.loaded.popitem(last=False)
            reg.removed(victim)
        self.loaded[mid] = None
        reg.loaded(mid, MODEL_SIZE)
        await self._publish(mid)
        return spi.LoadModelResponse(sizeInBytes=MODEL_SIZE)

    async def unloadModel(self, request, context):  # noqa: N802
        assert self._registration is not None
        self.loaded.pop(request.modelId, None)
        self._registration.removed(request.modelId)
        await self._publish(request.modelId)
        return spi.UnloadModelResponse()

    async def runtimeStatus(self, request, context):  # noqa: N802
        return spi.RuntimeStatusResponse(status=spi.RuntimeStatusResponse.READY,
                                         capacityInBytes=self.capacity_models * MODEL_SIZE)

    # -- V2 -------------------------------------------------------------

    async def ModelInfer(self, request, context):  # noqa: N802
        md = dict(context.invocation_metadata())
        mid = md.get("mm-model-id", request.model_name)
        self.infer_deadlines.append(context.time_remaining())
        self.infers_by_model[mid] = self.infers_by_model.get(mid, 0) + 1
        failure = self._failure(self.infer_errors, mid)
        if failure:
            await context.abort(*failure)
        if mid not in self.loaded:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model '{mid}' is not loaded on runtime {self.instance_id}")
        if self.infer_gate is not None:
            self.waiting_infers += 1
            try:
                await self.infer_gate.wait()
            finally:
                self.waiting_infers -= 1
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
