"""``inference.GRPCInferenceService`` (KServe V2) served by the runtime.

The model is named by ``model_name``, unless an ``mm-model-id`` (or UTF-8
``mm-model-id-bin``) header is present: the router sends the concrete model id
there, and it wins. A model not loaded here is NOT_FOUND "model 'X' is not
loaded on runtime <id>" (the router reloads elsewhere on that), while ModelReady
answers ready=false for it. Requests count as in flight while decoded and run,
so the cache never evicts a model under a request. A model measured to run in
less than ``inline_inference_max_us`` runs inline on the event loop, any other
in the inference pool (mesh/runtime/inline.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2 as pb

from mesh import errors
from mesh.grpc_errors import translate_errors
from mesh.runtime.backends import LoadedModel
from mesh.runtime.loader import ModelManager
from mesh.runtime.metrics import RuntimeMetrics
from mesh.runtime.tensors import decode_inputs, encode_outputs, requested_outputs
from mesh.streams import error_response, failure_message, ok_response, serve_stream

MODEL_ID_HEADER = "mm-model-id"
SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]


def _model_label(context: grpc.aio.ServicerContext, fallback: str) -> str:
    try:
        return model_id_from(context, fallback)
    except errors.MeshError:
        return ""


def model_id_from(context: grpc.aio.ServicerContext, fallback: str) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == MODEL_ID_HEADER and value:
            return str(value)
        if key == MODEL_ID_HEADER + "-bin" and value:
            try:
                return value.decode() if isinstance(value, bytes) else str(value)
            except UnicodeDecodeError:
                raise errors.InvalidArgument("mm-model-id-bin header is not UTF-8") from None
    if not fallback:
        raise errors.InvalidArgument("no model named: set model_name (or the mm-model-id header)")
    return fallback


def _metadata(model: LoadedModel, name: str) -> Any:
    resp = pb.ModelMetadataResponse(name=name, versions=["1"], platform=model.platform)
    for kind, specs in (("inputs", model.signature.inputs), ("outputs", model.signature.outputs)):
        for t in specs:
            getattr(resp, kind).add(name=t.name, datatype=t.datatype, shape=list(t.shape))
    return resp


class InferenceServicer:
    def __init__(self, manager: ModelManager, instance_id: str, metrics: RuntimeMetrics, version: str,
                 ready: Callable[[], bool]) -> None:
        self._manager = manager
        self._instance_id = instance_id
        self._metrics = metrics
        self._version = version
        self._ready = ready
        self._inline_s = manager.settings.inline_inference_max_us / 1e6

    def handler(self) -> grpc.GenericRpcHandler:
        from mesh.runtime.grpc_service import protobuf_service

        return protobuf_service(SERVICE, {
            "ServerLive": self.ServerLive, "ServerReady": self.ServerReady, "ServerMetadata": self.ServerMetadata,
            "ModelReady": self.ModelReady, "ModelMetadata": self.ModelMetadata, "ModelInfer": self.ModelInfer,
        }, streams={"ModelStreamInfer": self.ModelStreamInfer})

    @translate_errors
    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    @translate_errors
    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return pb.ServerReadyResponse(ready=self._ready())

    @translate_errors
    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return pb.ServerMetadataResponse(name="meshserve-runtime", version=self._version, extensions=[])

    @translate_errors
    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        entry = self._manager.cache.get(model_id_from(context, request.name))
        return pb.ModelReadyResponse(ready=entry is not None and entry.loaded)

    @translate_errors
    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        model_id = model_id_from(context, request.name)
        with self._manager.use(model_id, self._instance_id) as entry:
            return _metadata(entry.model, model_id)

    @translate_errors
    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        with self._metrics.track("ModelInfer", lambda: _model_label(context, request.model_name)):
            return await self._infer(request, context)

    async def ModelStreamInfer(self, requests: Any, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        """Each request answered on its own (see mesh/streams.py); errors as ``error_message``."""
        m = self._metrics

        async def parsed() -> Any:
            async for raw in requests:
                try:
                    yield pb.ModelInferRequest.FromString(raw)
                except DecodeError as e:
                    yield e

        def key_of(request: Any) -> str:
            if isinstance(request, DecodeError):
                return ""
            try:
                return model_id_from(context, request.model_name)
            except errors.MeshError:
                return ""

        async def handle(request: Any) -> bytes:
            if isinstance(request, DecodeError):
                return error_response(
                    f"INVALID_ARGUMENT: request is not a valid inference.ModelInferRequest message: {request}", "", "")
            try:
                with m.track("ModelStreamInfer", lambda: _model_label(context, request.model_name)):
                    response = await self._infer(request, context)
            except Exception as e:  # noqa: BLE001 - every failure is this request's answer; the stream goes on
                return error_response(failure_message(e), request.id, request.model_name)
            return ok_response(response.SerializeToString())

        m.streams_open.inc()
        try:
            await serve_stream(parsed(), context.write, key_of, handle,
                               on_in_flight=m.stream_requests_in_flight.inc)
        finally:
            m.streams_open.dec()

    async def _infer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        model_id = model_id_from(context, request.model_name)
        with self._manager.use(model_id, self._instance_id) as entry:
            model: LoadedModel = entry.model
            inputs = decode_inputs(request, model.signature, model_id)
            wanted = requested_outputs(request, model.signature, model_id)
            nbytes = sum(a.nbytes for a in inputs.values())
            try:
                if entry.run.inline(self._inline_s, nbytes):
                    self._metrics.runs_inline.inc()
                    outputs, took = _timed(model, inputs, wanted)
                else:
                    self._metrics.runs_pool.inc()
                    outputs, took = await asyncio.get_running_loop().run_in_executor(
                        self._manager.infer_pool, _timed, model, inputs, wanted)
            except errors.MeshError:
                raise
            except Exception as e:  # noqa: BLE001 - the framework's own error types
                cls = errors.InvalidArgument if "InvalidArgument" in type(e).__name__ else errors.Internal
                raise cls(f"model {model_id!r} failed to run: {type(e).__name__}: {e}") from None
            entry.run.observe(took, nbytes)
        # The model that ran (the header's concrete id when a vmodel is named in the body).
        response = pb.ModelInferResponse(
            model_name=model_id, model_version=request.model_version or "1", id=request.id
        )
        encode_outputs(response, outputs, model.signature)
        return response


def _timed(model: LoadedModel, inputs: dict[str, Any], wanted: tuple[str, ...]) -> tuple[dict[str, Any], float]:
    """Runs the model; returns its outputs and the seconds the run took (for the inline estimate)."""
    started = time.perf_counter()
    outputs = model.infer(inputs, wanted)
    return outputs, time.perf_counter() - started
