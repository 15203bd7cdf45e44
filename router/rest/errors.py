"""The one place where :mod:`mesh.errors` meets HTTP statuses.

Bodies are KServe's shape, ``{"error": "<message>"}``. Anything outside the
tree becomes 500 with an incident id; the traceback goes to the log, never to
the client.
"""

from __future__ import annotations

import logging

import orjson
from aiohttp import web

from mesh import errors
from mesh.grpc_errors import internal_message

log = logging.getLogger(__name__)

#: Status code name -> HTTP status (Google's gRPC-HTTP mapping, KServe's where it differs).
_BY_CODE = {
    "INVALID_ARGUMENT": 400,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "CANCELLED": 499,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "DATA_LOSS": 500,
}


def http_status(err: errors.MeshError) -> int:
    # Classes first where the code alone says too little.
    if isinstance(err, errors.ModelLoadingFailed):
        return 503  # KServe: a model that cannot load is unavailable, not a bad request
    if isinstance(err, errors.MessageTooLarge):
        return 413
    return _BY_CODE.get(err.code, 500)


def error_response(status: int, message: str, **headers: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"error": message}),
                        content_type="application/json", headers=headers or None)


def to_response(exc: BaseException, where: str) -> web.Response:
    """The response an exception stands for."""
    if isinstance(exc, errors.MeshError):
        return error_response(http_status(exc), exc.message)
    msg, incident = internal_message(exc)
    log.error("unhandled error in REST %s (incident %s)", where, incident, exc_info=exc)
    return error_response(500, msg)
