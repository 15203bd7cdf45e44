"""The REST listener: aiohttp on the router's event loop, beside grpc.aio.

One catch-all route dispatches on the raw request path (router/rest/paths.py),
so percent-encoded model ids stay whole. Every inference request is decoded
to a V2 ModelInferRequest, forwarded through :class:`router.core.InferenceCore`
and its response encoded back; errors become KServe's ``{"error": ...}`` with
the status router/rest/errors.py gives them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web

from mesh.errors import InvalidArgument, MessageTooLarge
from mesh.settings import parse_host_port
from router.core import InferenceCore
from router.splits import SPLIT_KEY_HEADER
from router.rest import v1, v2
from router.rest.errors import error_response, to_response
from router.rest.paths import Route, route

log = logging.getLogger(__name__)

_JSON = "application/json"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m)?\s*$")

Handler = Callable[[web.Request, Route], Awaitable[web.Response]]
#: Bodies from this size on are decoded and encoded in a thread: a 100 MB JSON tensor
#: would otherwise stall every other request on the event loop.
OFFLOAD_BYTES = 256 * 1024
T = TypeVar("T")


def parse_timeout(value: str, where: str) -> float:
    """Seconds from ``2.5``, ``2.5s``, ``500ms`` or ``1m``."""
    m = _DURATION.match(value)
    seconds = float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)] if m else 0.0
    if seconds <= 0:
        raise InvalidArgument(f"{where} {value!r} is not a positive duration: use seconds (2.5) or 500ms / 2s / 1m")
    return seconds


def _json(doc: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), content_type=_JSON)


class RestServer:
    """``start()`` returns once the port is bound; ``endpoint`` is HOST:PORT."""

    def __init__(self, core: InferenceCore, listen: str, max_body_bytes: int, version: str,
                 shutdown_timeout_s: float = 5.0,
                 authorize: Callable[[str | None], None] | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        """``authorize``: called with each request's Authorization header; raises a MeshError
        (Unauthenticated) to refuse it (the router's --auth-inference). ``ssl_context``: HTTPS
        (mesh/security/http_tls.py: the router's certificate, re-read on change)."""
        self._ssl = ssl_context
        self._authorize = authorize
        self._core = core
        self._shutdown_timeout = shutdown_timeout_s
        self._listen = listen
        self._max = max_body_bytes
        self._version = version
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._handlers: dict[str, Handler] = {
            "v1_list": self._v1_list, "v1_model": self._v1_model, "v1_predict": self._v1_predict,
            "v2_server": self._v2_server, "v2_live": self._v2_live, "v2_ready": self._v2_ready,
            "v2_metadata": self._v2_metadata, "v2_model_ready": self._v2_model_ready, "v2_infer": self._v2_infer,
        }

    @property
    def endpoint(self) -> str:
        return f"{self._listen.rpartition(':')[0]}:{self.port}"

    async def start(self) -> None:
        host, port = parse_host_port(self._listen, what="rest-listen")
        # The body limit is enforced in _body (with our message); aiohttp's own is a backstop.
        app = web.Application(client_max_size=self._max + 1)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        # On stop, requests in flight get shutdown_timeout_s to finish; idle keep-alives close at once.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024, ssl_context=self._ssl)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise OSError(f"cannot listen for REST on {self._listen}: {e.strerror or e}") from None
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.shutdown()
            await self._runner.cleanup()
            self._runner = None

    # -- plumbing -----------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        where = request.path
        try:
            if self._authorize is not None:
                self._authorize(request.headers.get("Authorization"))
            r = route(request.raw_path)
            where = r.kind
            if request.method != r.method:
                return error_response(405, f"{request.method} is not allowed on {request.path}; use {r.method}",
                                      Allow=r.method)
            return await self._handlers[r.kind](request, r)
        except Exception as e:  # noqa: BLE001 - the last line before the client
            return to_response(e, where)

    async def _body(self, request: web.Request) -> bytes:
        n = request.content_length
        if n is None or n <= self._max:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                body = None
            if body is not None and len(body) <= self._max:
                return body
        raise MessageTooLarge(
            f"request body{f' of {n} bytes' if n is not None else ''} is over the limit of {self._max} bytes "
            "(the router's max_message_bytes, MESHSERVE_MAX_MESSAGE_BYTES); send smaller batches or raise it")

    @staticmethod
    async def _cpu(size: int, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, in the default executor when ``size`` bytes make it worth a thread."""
        if size < OFFLOAD_BYTES:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    @staticmethod
    def _split_key(request: web.Request) -> tuple[tuple[str, str], ...]:
        """The caller's ``mm-split-key`` header, passed on as gRPC metadata (sticky split draws)."""
        key = request.headers.get(SPLIT_KEY_HEADER)
        return ((SPLIT_KEY_HEADER, key),) if key else ()

    def _timeout(self, request: web.Request, *more: float | None) -> float | None:
        """The tightest of the ``timeout`` query parameter, the ``Timeout`` header and ``more``."""
        given = [t for t in more if t is not None]
        if "timeout" in request.query:
            given.append(parse_timeout(request.query["timeout"], "query parameter timeout"))
        header = request.headers.get("Timeout")
        if header is not None:
            given.append(parse_timeout(header, "header Timeout"))
        return min(given) if given else None

    # -- V1 -----------------------------------------------------------------

    async def _v1_list(self, request: web.Request, r: Route) -> web.Response:
        return _json({"models": self._core.model_names()})

    async def _v1_model(self, request: web.Request, r: Route) -> web.Response:
        return _json({"name": r.model, "ready": self._core.model_ready(r.model)})

    async def _v1_predict(self, request: web.Request, r: Route) -> web.Response:
        core = self._core
        with core.track("Predict", "rest", r.model):
            # One target for the signature and the inference (a split vmodel draws once);
            # an unknown model is 404 whatever the body says.
            model_id = await core.resolve_known(r.model, split_key=request.headers.get(SPLIT_KEY_HEADER), count=True)
            body = await self._body(request)
            deadline = core.deadline(self._timeout(request))
            signature = await core.metadata(model_id, timeout_s=core.remaining(deadline))
            message = await self._cpu(len(body), v1.decode_predict, body, model_id, signature)
            raw = await core.infer(message, timeout_s=core.remaining(deadline))
            return web.Response(body=await self._cpu(len(raw), v1.encode_predictions, raw), content_type=_JSON)

    # -- V2 -----------------------------------------------------------------

    async def _v2_server(self, request: web.Request, r: Route) -> web.Response:
        return _json({"name": "meshserve", "version": self._version,
                      "extensions": ["model_mesh", "binary_tensor_data"]})

    async def _v2_live(self, request: web.Request, r: Route) -> web.Response:
        return _json({"live": True})

    async def _v2_ready(self, request: web.Request, r: Route) -> web.Response:
        ready = self._core.server_ready
        return _json({"ready": ready}, 200 if ready else 503)

    async def _v2_model_ready(self, request: web.Request, r: Route) -> web.Response:
        if not self._core.model_ready(r.model):
            return error_response(503, f"model {r.model!r} is registered but not loaded; "
                                       "the first inference request loads it")
        return _json({"name": r.model, "ready": True})

    async def _v2_metadata(self, request: web.Request, r: Route) -> web.Response:
        core = self._core
        with core.track("ModelMetadata", "rest", r.model):
            resp = await core.metadata(r.model, version=r.version, timeout_s=self._timeout(request))
            return web.Response(body=v2.metadata_json(resp), content_type=_JSON)

    async def _v2_infer(self, request: web.Request, r: Route) -> web.Response:
        core = self._core
        with core.track("ModelInfer", "rest", r.model):
            await core.resolve_known(r.model)  # an unknown model is 404 whatever the body says
            body = await self._body(request)
            decoded = await self._cpu(len(body), v2.decode_request, body, request.headers.get(v2.HEADER_LENGTH),
                                      r.model, r.version)
            raw = await core.infer(decoded.message, timeout_s=self._timeout(request, decoded.timeout_s),
                                   metadata=self._split_key(request))
            out, header_length = await self._cpu(len(raw), v2.encode_response, raw, decoded)
            if header_length is None:
                return web.Response(body=out, content_type=_JSON)
            return web.Response(body=out, content_type="application/octet-stream",
                                headers={v2.HEADER_LENGTH: str(header_length)})

