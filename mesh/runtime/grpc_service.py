"""Registers protobuf services so that undecodable request bytes get INVALID_ARGUMENT.

grpc.aio's generated ``add_*_to_server`` deserialises before the handler runs,
and a ``DecodeError`` there reaches the client as UNKNOWN "Unexpected <class
'DecodeError'>". Here each method takes raw bytes and parses them itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _decoding(fn: Handler, request_cls: Any) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]:
    name = request_cls.DESCRIPTOR.full_name

    async def handler(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = request_cls.FromString(raw)
        except DecodeError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request is not a valid {name} message: {e}")
        return await fn(request, context)

    return handler


StreamHandler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[None]]


def protobuf_service(service: ServiceDescriptor, impls: dict[str, Handler],
                     streams: dict[str, StreamHandler] | None = None) -> grpc.GenericRpcHandler:
    """A handler for the unary methods of ``service`` that ``impls`` implements
    (the others answer UNIMPLEMENTED, as grpc does for unknown methods). ``streams``
    are bidirectional methods that read raw request bytes and write raw response
    bytes themselves (they decode each message, so a bad one is theirs to answer)."""
    handlers = {}
    for name, stream in (streams or {}).items():
        handlers[name] = grpc.stream_stream_rpc_method_handler(stream)
    for method in service.methods:
        fn = impls.get(method.name)
        if fn is None:
            continue
        request_cls = message_factory.GetMessageClass(method.input_type)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _decoding(fn, request_cls),
            request_deserializer=None,
            response_serializer=lambda m: m.SerializeToString(),
        )
    unknown = (set(impls) | set(streams or {})) - {m.name for m in service.methods}
    if unknown:
        raise ValueError(f"{service.full_name} has no methods {sorted(unknown)}")
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
