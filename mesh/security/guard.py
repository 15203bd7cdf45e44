"""Guards wrapped around a gRPC server's method handlers when they are registered.

``GuardedServer(server, gates)`` stands in for the server in the generated
``add_*Servicer_to_server`` calls (and ``add_generic_rpc_handlers``). Each method
handler it sees is rewrapped once, at registration:

- a handler with a request deserialiser gets raw bytes and decodes them itself,
  so an undecodable message is INVALID_ARGUMENT naming the message type (grpc.aio
  answers UNKNOWN "Unexpected <class 'DecodeError'>" when its deserialiser throws);
- a method that ``gates(method)`` names a gate for runs that gate first (a token,
  a client-certificate identity); its MeshError becomes the RPC's status.

Methods with neither (the raw-bytes inference handlers without auth) are left as
they are, so the hot path pays nothing.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import grpc

from mesh import errors
from mesh.grpc_errors import status_code

#: Raises a MeshError (Unauthenticated, PermissionDenied) to refuse the call.
Gate = Callable[[grpc.aio.ServicerContext], None]
Gates = Callable[[str], Gate | None]


def no_gates(method: str) -> Gate | None:
    return None


async def _refuse(context: grpc.aio.ServicerContext, err: errors.MeshError) -> None:
    await context.abort(status_code(err), err.message)


def _decoder(method: str, deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None
    # The request type's name, from the deserialiser (Message.FromString) where it says.
    owner = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    what = owner.full_name if owner is not None else f"request message of {method}"

    def decode(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception as e:  # noqa: BLE001 - DecodeError, and the upb/C++ variants
            raise errors.InvalidArgument(
                f"request is not a valid {what} message ({type(e).__name__}): send a serialised {what}") from None

    return decode


async def _prepare(context: grpc.aio.ServicerContext, gate: Gate | None, decode: Callable[[bytes], Any] | None,
                   raw: Any) -> Any:
    try:
        if gate is not None:
            gate(context)
        return decode(raw) if decode is not None else raw
    except errors.MeshError as e:
        await _refuse(context, e)


def _decoded_stream(context: grpc.aio.ServicerContext, decode: Callable[[bytes], Any] | None,
                    requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async def gen() -> AsyncIterator[Any]:
        async for raw in requests:
            yield await _prepare(context, None, decode, raw)

    return gen() if decode is not None else requests


async def _stream_out(result: Any) -> AsyncIterator[Any]:
    """Yields from an async generator, a sync iterable, or awaits a coroutine handler."""
    if inspect.isasyncgen(result):
        async for item in result:
            yield item
    elif inspect.isawaitable(result):
        await result
    elif isinstance(result, Iterable):
        for item in result:
            yield item


def guard_handler(method: str, handler: grpc.RpcMethodHandler, gate: Gate | None) -> grpc.RpcMethodHandler:
    """``handler`` rewrapped for decoding and ``gate`` (itself when neither applies)."""
    decode = _decoder(method, handler.request_deserializer)
    if decode is None and gate is None:
        return handler
    h: Any = handler
    if h.unary_unary is not None:
        inner_uu = h.unary_unary

        async def unary_unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            request = await _prepare(context, gate, decode, raw)
            return await inner_uu(request, context)

        return h._replace(request_deserializer=None, unary_unary=unary_unary)  # type: ignore[no-any-return]
    if h.unary_stream is not None:
        inner_us = h.unary_stream

        async def unary_stream(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            request = await _prepare(context, gate, decode, raw)
            async for item in _stream_out(inner_us(request, context)):
                yield item

        return h._replace(request_deserializer=None, unary_stream=unary_stream)  # type: ignore[no-any-return]
    if h.stream_unary is not None:
        inner_su = h.stream_unary

        async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            await _prepare(context, gate, None, None)
            return await inner_su(_decoded_stream(context, decode, requests), context)

        return h._replace(request_deserializer=None, stream_unary=stream_unary)  # type: ignore[no-any-return]
    inner_ss = h.stream_stream

    async def stream_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await _prepare(context, gate, None, None)
        async for item in _stream_out(inner_ss(_decoded_stream(context, decode, requests), context)):
            yield item

    return h._replace(request_deserializer=None, stream_stream=stream_stream)  # type: ignore[no-any-return]


class _GuardedGeneric(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, gates: Gates) -> None:
        self._inner = inner
        self._gates = gates
        # Only methods the inner handler serves are cached: random names cannot grow it.
        self._cache: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        cached = self._cache.get(method)
        if cached is not None:
            return cached
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        wrapped = self._cache[method] = guard_handler(method, handler, self._gates(method))
        return wrapped


class GuardedServer:
    """A stand-in for a ``grpc.aio.Server`` during handler registration."""

    def __init__(self, server: grpc.aio.Server, gates: Gates = no_gates) -> None:
        self._server = server
        self._gates = gates

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers([_GuardedGeneric(h, self._gates) for h in handlers])

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        wrapped = {name: guard_handler(f"/{service}/{name}", h, self._gates(f"/{service}/{name}"))
                   for name, h in handlers.items()}
        self._server.add_registered_method_handlers(service, wrapped)  # type: ignore[attr-defined]


def any_gate(gates: Sequence[Gate]) -> Gate:
    """Passes when one of ``gates`` passes; otherwise the first refusal is the answer."""
    if len(gates) == 1:
        return gates[0]

    def gate(context: grpc.aio.ServicerContext) -> None:
        first: errors.MeshError | None = None
        for g in gates:
            try:
                g(context)
                return
            except errors.MeshError as e:
                first = first or e
        assert first is not None
        raise first

    return gate


def enable_reflection(service_names: Sequence[str], server: GuardedServer) -> None:
    """grpc_reflection's ``enable_server_reflection`` for a guarded aio server."""
    from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(  # type: ignore[no-untyped-call]
        reflection.aio.ReflectionServicer(service_names), server)
