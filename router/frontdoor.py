"""``inference.GRPCInferenceService`` on the router, as raw-bytes handlers.

ModelInfer and ModelMetadata are forwarded without deserialising (the request
may carry large tensors); ModelReady and the server calls are answered here from
the mirror. Registered as a generic handler so requests arrive as bytes.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as v2

from mesh.errors import InvalidArgument, MeshError
from mesh.grpc_errors import translate_errors
from mesh.streams import error_response, failure_message, ok_response, serve_stream
from router.forward import Forwarder
from router.metrics import RouterMetrics
from router.table import RoutingTable
from router.wire import read_string_field

SERVICE = "inference.GRPCInferenceService"
VERSION = "0.1.0"


def _parse(cls: Any, data: bytes) -> Any:
    try:
        return cls.FromString(data)
    except Exception:  # protobuf raises DecodeError and friends
        raise InvalidArgument(f"request is not a valid {cls.__name__} message") from None


def instrumented(method: str) -> Callable[[Any], Any]:
    """Counts and times a handler by outcome (below translate_errors, so it sees the error)."""

    def wrap(fn: Any) -> Any:
        @functools.wraps(fn)
        async def inner(self: "FrontDoor", request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            m = self._metrics
            if m is None:
                return await fn(self, request, context)  # type: ignore[no-any-return]

            def model() -> str:
                try:
                    return self._fwd.resolve(context.invocation_metadata() or (), request)
                except MeshError:
                    return ""

            with m.track(method, model):
                return await fn(self, request, context)  # type: ignore[no-any-return]

        return inner

    return wrap


class FrontDoor:
    def __init__(self, forwarder: Forwarder, table: RoutingTable, default_timeout_s: float,
                 metrics: RouterMetrics | None = None) -> None:
        self._fwd = forwarder
        self._table = table
        self._default_timeout = default_timeout_s
        self._metrics = metrics
        self._ready = False

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        return self._default_timeout if remaining is None else remaining

    @translate_errors
    @instrumented("ModelInfer")
    async def model_infer(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await self._fwd.forward(
            f"/{SERVICE}/ModelInfer", request, context.invocation_metadata() or (), self._timeout(context))

    @translate_errors
    @instrumented("ModelMetadata")
    async def model_metadata(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await self._fwd.forward(
            f"/{SERVICE}/ModelMetadata", request, context.invocation_metadata() or (), self._timeout(context))

    async def model_stream_infer(self, requests: Any, context: grpc.aio.ServicerContext) -> None:
        """KServe V2 ModelStreamInfer: every request is forwarded as a ModelInfer of its
        own (routing, load on a miss, retries), answers in per-model order; a failed
        request answers with ``error_message`` and the stream goes on."""
        metadata = context.invocation_metadata() or ()
        m = self._metrics

        def key_of(raw: bytes) -> str:
            try:
                return self._fwd.resolve(metadata, raw)
            except MeshError:
                return ""

        async def forward(raw: bytes) -> bytes:
            return await self._fwd.forward(f"/{SERVICE}/ModelInfer", raw, metadata, self._timeout(context))

        async def handle(raw: bytes) -> bytes:
            try:
                if m is None:
                    return ok_response(await forward(raw))
                with m.track("ModelStreamInfer", lambda: key_of(raw)):
                    return ok_response(await forward(raw))
            except Exception as e:  # noqa: BLE001 - every failure is this request's answer; the stream goes on
                try:
                    rid, name = read_string_field(raw, 3), read_string_field(raw, 1)
                except MeshError:
                    rid, name = "", ""
                return error_response(failure_message(e), rid, name)

        if m is None:
            await serve_stream(requests, context.write, key_of, handle)
            return
        m.streams_open.inc()
        try:
            await serve_stream(requests, context.write, key_of, handle, on_in_flight=m.stream_requests_in_flight.inc)
        finally:
            m.streams_open.dec()

    @translate_errors
    async def model_ready(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        _parse(v2.ModelReadyRequest, request)
        try:
            model_id = self._fwd.resolve(context.invocation_metadata() or (), request)
        except MeshError:
            return v2.ModelReadyResponse(ready=False).SerializeToString()
        return v2.ModelReadyResponse(ready=bool(self._table.loaded_on(model_id))).SerializeToString()

    @translate_errors
    async def server_live(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return v2.ServerLiveResponse(live=True).SerializeToString()

    @translate_errors
    async def server_ready(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return v2.ServerReadyResponse(ready=self._ready).SerializeToString()

    @translate_errors
    async def server_metadata(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return v2.ServerMetadataResponse(name="meshserve", version=VERSION, extensions=["model_mesh"]).SerializeToString()

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(fn: Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]) -> grpc.RpcMethodHandler:
            # No (de)serialisers: the handler sees and returns raw bytes.
            return grpc.unary_unary_rpc_method_handler(fn)

        return grpc.method_handlers_generic_handler(SERVICE, {
            "ModelInfer": unary(self.model_infer),
            "ModelMetadata": unary(self.model_metadata),
            "ModelReady": unary(self.model_ready),
            "ServerLive": unary(self.server_live),
            "ServerReady": unary(self.server_ready),
            "ServerMetadata": unary(self.server_metadata),
            # Raw bytes both ways, as for the unary calls.
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(self.model_stream_infer),
        })
