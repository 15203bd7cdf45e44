"""The hot path: route one inference request's raw bytes to a runtime.

The model id comes from the ``mm-model-id`` / ``mm-vmodel-id`` headers (or their
``-bin`` variants), else from field 1 of the raw request (a vmodel id falling
back to a model id). The bytes are forwarded unchanged with the concrete id in
``mm-model-id``; the least-loaded copy wins; UNAVAILABLE or a copy that vanished
is retried on another copy or a fresh load, within the request's deadline.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc

from mesh.clock import Clock
from mesh.errors import DeadlineExceeded, InvalidArgument, MeshError, ModelNotFound, Unavailable
from mesh.grpc_errors import from_rpc_error
from router.loader import Loader
from router.metrics import RouterMetrics
from router.runtimes import RuntimeClients
from router.splits import SPLIT_KEY_HEADER
from router.table import RoutingTable
from router.wire import read_field1, replace_field1

log = logging.getLogger(__name__)

Metadata = Sequence[tuple[str, str | bytes]]

#: Set by the Envoy gateway beside ``mm-model-id`` when it read that id from the body
#: (router/xds/bootstrap.py): the name is then a body name (a vmodel first).
BODY_MARKER = "mm-body-model"

# Headers not passed on to runtimes: ours (replaced) and transport-level ones.
_DROP = {"mm-model-id", "mm-vmodel-id", "mm-model-id-bin", "mm-vmodel-id-bin", BODY_MARKER, "user-agent",
         "content-type", "te", "grpc-accept-encoding", "grpc-encoding", "grpc-timeout", "accept-encoding"}


def split_key_from(metadata: Metadata) -> str | None:
    """The caller's ``mm-split-key``: requests with the same key reach the same split target."""
    for k, v in metadata:
        if k == SPLIT_KEY_HEADER and v:
            return v if isinstance(v, str) else v.decode(errors="replace")
    return None


def model_name_from(metadata: Metadata, body: bytes | None) -> tuple[str, str]:
    """(name, where it came from: "model", "vmodel" or "body"). Header ids win over the body."""
    found: dict[str, str] = {}
    for k, v in metadata:
        if k == BODY_MARKER:
            found[k] = ""
        elif k in ("mm-model-id", "mm-vmodel-id"):
            found[k] = v if isinstance(v, str) else v.decode()
        elif k in ("mm-model-id-bin", "mm-vmodel-id-bin"):
            raw = v if isinstance(v, bytes) else v.encode()
            try:
                found[k[:-4]] = raw.decode()
            except UnicodeDecodeError:
                raise InvalidArgument(f"header {k} is not valid UTF-8") from None
    if found.pop(BODY_MARKER, None) is not None:
        found.pop("mm-model-id", None)
    if "mm-model-id" in found and "mm-vmodel-id" in found:
        raise InvalidArgument("send either mm-model-id or mm-vmodel-id, not both")
    if "mm-model-id" in found:
        return found["mm-model-id"], "model"
    if "mm-vmodel-id" in found:
        return found["mm-vmodel-id"], "vmodel"
    name = read_field1(body) if body is not None else ""
    if not name:
        raise InvalidArgument("no model named: set model_name in the request or an mm-model-id header")
    return name, "body"


class Forwarder:
    def __init__(self, table: RoutingTable, loader: Loader, runtimes: RuntimeClients, clock: Clock,
                 max_attempts: int = 4, metrics: RouterMetrics | None = None) -> None:
        self._metrics = metrics
        self._table = table
        self._loader = loader
        self._runtimes = runtimes
        self._clock = clock
        self._max_attempts = max_attempts
        #: model id -> requests forwarded, for copy scaling (reset by the scaler).
        self.request_counts: dict[str, int] = {}
        #: model id -> monotonic time of its last request.
        self.last_used: dict[str, float] = {}

    def resolve(self, metadata: Metadata, body: bytes | None) -> str:
        return self._resolve(metadata, body)[0]

    def _resolve(self, metadata: Metadata, body: bytes | None, count: bool = False) -> tuple[str, str]:
        """(concrete model id, the id the body names); ``count``: the request's own routing decision."""
        name, source = model_name_from(metadata, body)
        if source == "model":
            model_id = self._table.resolve(name, vmodel_first=False)
        elif source == "vmodel":
            model_id = self._table.resolve_vmodel(name, split_key_from(metadata), count)
        else:
            return self._table.resolve(name, vmodel_first=True, split_key=split_key_from(metadata), count=count), name
        return model_id, read_field1(body) if body is not None else ""

    async def forward(self, method: str, body: bytes, metadata: Metadata, timeout_s: float) -> bytes:
        try:
            model_id, body_name = self._resolve(metadata, body, count=True)
        except ModelNotFound:  # registered through another router a moment ago?
            await self._table.refresh(model_name_from(metadata, body)[0])
            model_id, body_name = self._resolve(metadata, body, count=True)
        if body_name != model_id:
            # The body names a vmodel (or another id than the header): inject the
            # concrete id, as ModelMesh does for runtimes declaring idInjectionPath [1].
            body = replace_field1(body, model_id)
        now = self._clock.monotonic()
        deadline = now + timeout_s
        self.request_counts[model_id] = self.request_counts.get(model_id, 0) + 1
        self.last_used[model_id] = now
        passthrough = [(k, v) for k, v in metadata if k not in _DROP and not k.startswith(":")]
        md = (("mm-model-id", model_id), *passthrough)
        last: MeshError | None = None
        retry_reason = ""  # why the previous attempt failed; counted once a retry is made
        for attempt in range(self._max_attempts):
            if retry_reason and self._metrics is not None:
                self._metrics.retries.labels(retry_reason).inc()
            retry_reason = ""
            instance_id = self._table.pick(model_id)
            if self._metrics is not None and attempt == 0:
                (self._metrics.hits if instance_id is not None else self._metrics.misses).inc()
            if instance_id is None:
                waited = self._clock.monotonic()
                instance_id = await self._loader.ensure_loaded(model_id, deadline)
                if self._metrics is not None:
                    self._metrics.miss_seconds.observe(self._clock.monotonic() - waited)
            endpoint = self._table.endpoint(instance_id)
            if endpoint is None:
                self._table.suspect(instance_id)
                continue
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                break
            self._table.begin(model_id, instance_id)
            try:
                return await self._runtimes.raw(endpoint, method)(body, metadata=md, timeout=remaining)  # type: ignore[no-any-return]
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if code == grpc.StatusCode.UNAVAILABLE:
                    # Runtime down (or restarting): avoid it until its lease settles it.
                    self._table.suspect(instance_id)
                elif code == grpc.StatusCode.NOT_FOUND and "not loaded" in (e.details() or ""):
                    # The copy was evicted; the mirror will drop it in a moment.
                    self._table.suspect(instance_id, model_id)
                else:
                    raise from_rpc_error(e) from None
                log.info("copy of %s on %s unusable (%s); retrying", model_id, instance_id, code.name)
                retry_reason = code.name
                last = from_rpc_error(e, f"model {model_id!r} on runtime {instance_id}")
            finally:
                self._table.end(model_id, instance_id)
        if deadline - self._clock.monotonic() <= 0:
            raise DeadlineExceeded(f"request for model {model_id!r} ran out of time after retries")
        raise last or Unavailable(f"no copy of model {model_id!r} could serve the request")
