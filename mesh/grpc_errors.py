"""The one place where :mod:`mesh.errors` meets gRPC status codes.

Servers wrap their handlers with :func:`translate_errors`; a :class:`MeshError`
becomes its status code and message, anything else becomes INTERNAL with an
incident id (the traceback is logged here, never sent to the client). Clients turn
an ``AioRpcError`` back into the tree with :func:`from_rpc_error`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from mesh import errors

log = logging.getLogger(__name__)

_BY_CODE: dict[str, type[errors.MeshError]] = {
    "INVALID_ARGUMENT": errors.InvalidArgument,
    "NOT_FOUND": errors.NotFound,
    "ALREADY_EXISTS": errors.AlreadyExists,
    "FAILED_PRECONDITION": errors.FailedPrecondition,
    "ABORTED": errors.Conflict,
    "RESOURCE_EXHAUSTED": errors.ResourceExhausted,
    "UNAVAILABLE": errors.Unavailable,
    "DEADLINE_EXCEEDED": errors.DeadlineExceeded,
    "CANCELLED": errors.Cancelled,
    "PERMISSION_DENIED": errors.PermissionDenied,
    "UNAUTHENTICATED": errors.Unauthenticated,
    "UNIMPLEMENTED": errors.Unimplemented,
    "INTERNAL": errors.Internal,
    "DATA_LOSS": errors.CorruptModel,
}


def status_code(err: errors.MeshError) -> grpc.StatusCode:
    """The gRPC status for an error of the tree."""
    return getattr(grpc.StatusCode, err.code, grpc.StatusCode.INTERNAL)


def from_rpc_error(exc: grpc.RpcError, what: str = "") -> errors.MeshError:
    """Turns a client-side RPC failure into the matching tree error."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if code is not None else "UNKNOWN"
    cls = _BY_CODE.get(name, errors.Internal)
    prefix = f"{what}: " if what else ""
    return cls(f"{prefix}{details}")


#: A runtime's answer to loadModel that blames the model (its files, storage object,
#: path or settings), not the runtime's state: the router reports it as the model's
#: load failure. UNAVAILABLE (storage unreachable) and RESOURCE_EXHAUSTED (no room)
#: keep their own codes: trying later or elsewhere may work.
_MODEL_FAULTS = {"FAILED_PRECONDITION", "DATA_LOSS", "INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED"}


def from_load_error(exc: grpc.RpcError, what: str = "") -> errors.MeshError:
    """A runtime's failed loadModel as a tree error: a fault of the model becomes
    :class:`~mesh.errors.ModelLoadingFailed` (FAILED_PRECONDITION, REST 503), anything
    else maps as :func:`from_rpc_error` does."""
    err = from_rpc_error(exc, what)
    return errors.ModelLoadingFailed(err.message) if err.code in _MODEL_FAULTS else err


def internal_message(exc: BaseException) -> tuple[str, str]:
    """A client-safe message for an unexpected exception, and its incident id."""
    incident = uuid.uuid4().hex[:12]
    return (
        f"internal error (incident {incident}); the server log has the details",
        incident,
    )


F = TypeVar("F", bound=Callable[..., Any])


async def _abort(fn: Any, exc: Exception, context: grpc.aio.ServicerContext) -> None:
    """Ends the RPC with the status the exception stands for."""
    if isinstance(exc, errors.MeshError):
        await context.abort(status_code(exc), exc.message)
    msg, incident = internal_message(exc)
    log.error("unhandled error in %s (incident %s)", fn.__qualname__, incident, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, msg)


def translate_errors(fn: F) -> F:
    """Wraps a grpc.aio servicer method (unary or server-streaming)."""

    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def stream_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for item in fn(self, request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as e:  # noqa: BLE001 - last line before the client
                await _abort(fn, e, context)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as e:  # noqa: BLE001 - last line before the client
            await _abort(fn, e, context)

    return wrapper  # type: ignore[return-value]
