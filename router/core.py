"""The inference core every front door other than gRPC calls into.

REST (router/rest/) turns an HTTP request into a serialized V2
``ModelInferRequest`` and hands it here; the bytes go through the same
:class:`~router.forward.Forwarder` as gRPC (routing, load-on-miss, vmodel
resolution, id injection, retries, deadline) and come back as
``ModelInferResponse`` bytes. The gRPC front door keeps its own thin handlers
(its hot path is unchanged); both count into the same request metrics, told
apart by ``protocol`` (a front door wraps each whole request in :meth:`track`).

Model signatures (ModelMetadata) are memoized per concrete model for the
protocols that need them (KServe V1 has no datatypes on the wire): bounded,
with a TTL, and dropped when the model's record or its loaded copies change.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from cachetools import TTLCache
from tritonclient.grpc import service_pb2 as v2

from mesh.clock import Clock
from mesh.errors import DeadlineExceeded, Internal, MeshError
from mesh.registry import records as rec
from router.forward import Forwarder, Metadata
from router.metrics import RouterMetrics
from router.table import RoutingTable

SERVICE = "inference.GRPCInferenceService"
INFER = f"/{SERVICE}/ModelInfer"
METADATA = f"/{SERVICE}/ModelMetadata"


class InferenceCore:
    def __init__(self, forwarder: Forwarder, table: RoutingTable, clock: Clock, default_timeout_s: float,
                 metrics: RouterMetrics | None = None, *, metadata_ttl_s: float = 300.0,
                 metadata_entries: int = 4096) -> None:
        self._fwd = forwarder
        self._table = table
        self._metrics = metrics
        self._clock = clock
        self.default_timeout_s = default_timeout_s
        #: concrete model id -> (fingerprint of its record and copies, ModelMetadataResponse)
        self._signatures: TTLCache[str, tuple[tuple[object, ...], v2.ModelMetadataResponse]] = TTLCache(
            metadata_entries, metadata_ttl_s, timer=clock.monotonic)
        self._ready = False

    # -- names and state, from the mirror ------------------------------------

    def resolve(self, name: str, *, split_key: str | None = None, count: bool = False) -> str:
        """The concrete model id for ``name`` (a vmodel first, then a model); ModelNotFound.
        A vmodel with a traffic split draws a target (``split_key`` fixes the draw);
        ``count``: this is the request's routing decision (split metrics)."""
        return self._table.resolve(name, vmodel_first=True, split_key=split_key, count=count)

    async def resolve_known(self, name: str, *, split_key: str | None = None, count: bool = False) -> str:
        """``resolve``, reading ``name`` from the registry before ModelNotFound (read-your-writes
        for a model registered through another router a moment ago)."""
        return await self._table.caught_up(name, lambda: self.resolve(name, split_key=split_key, count=count))

    def model_ready(self, name: str) -> bool:
        """Registered (ModelNotFound otherwise) and loaded somewhere."""
        return bool(self._table.loaded_on(self.resolve(name)))

    def model_names(self) -> list[str]:
        """Every registered model and vmodel name, sorted."""
        m = self._table.mirror
        return sorted({*m.models, *m.vmodels})

    @property
    def server_ready(self) -> bool:
        return self._ready

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    def timeout(self, requested_s: float | None) -> float:
        return self.default_timeout_s if requested_s is None else requested_s

    # -- forwarding ---------------------------------------------------------

    def deadline(self, timeout_s: float | None) -> float:
        """The monotonic time a request given ``timeout_s`` (None: the default) must end by."""
        return self._clock.monotonic() + self.timeout(timeout_s)

    def remaining(self, deadline: float) -> float:
        """Seconds left before ``deadline``; DeadlineExceeded once none are."""
        left = deadline - self._clock.monotonic()
        if left <= 0:
            raise DeadlineExceeded("the request's timeout ran out before it could be forwarded")
        return left

    @contextmanager
    def track(self, method: str, protocol: str, model: str = "") -> Iterator[None]:
        """Counts and times one whole request (decode, forward, encode) by outcome,
        into the same families as gRPC, labelled ``protocol``."""
        if self._metrics is None:
            yield
            return

        def model_id() -> str:
            try:
                return self.resolve(model) if model else ""
            except MeshError:
                return ""

        with self._metrics.track(method, model_id, protocol):
            yield

    async def infer(self, request: bytes, *, timeout_s: float | None = None, metadata: Metadata = ()) -> bytes:
        """A serialized ModelInferRequest in, the runtime's ModelInferResponse bytes out."""
        return await self._fwd.forward(INFER, request, metadata, self.timeout(timeout_s))

    async def metadata(self, name: str, *, timeout_s: float | None = None, version: str = "",
                       split_key: str | None = None) -> v2.ModelMetadataResponse:
        """The ModelMetadata of the model ``name`` resolves to (loads it on a miss), memoized
        per concrete model. Resolve first and pass the concrete id to keep a split vmodel's
        signature and inference on the same target."""
        model_id = await self.resolve_known(name, split_key=split_key)
        hit = self._signatures.get(model_id)
        if hit is not None and hit[0] == self._fingerprint(model_id):
            return hit[1]
        body = v2.ModelMetadataRequest(name=model_id, version=version).SerializeToString()
        raw = await self._fwd.forward(METADATA, body, (), self.timeout(timeout_s))
        try:
            resp = v2.ModelMetadataResponse.FromString(raw)
        except Exception:  # protobuf's DecodeError and friends
            raise Internal(f"model {model_id!r}: the runtime sent an unreadable ModelMetadataResponse") from None
        self._signatures[model_id] = (self._fingerprint(model_id), resp)
        return resp

    def _fingerprint(self, model_id: str) -> tuple[object, ...]:
        """What the signature depends on: the registration and the copies holding it."""
        m = self._table.mirror.models.get(model_id)
        copies: Sequence[tuple[str, int]] = sorted(
            (i, c.since_ms) for i, c in self._table.copies(model_id).items() if c.state == rec.LOADED)
        reg = (m.type, m.path, m.key, m.registered_ms) if m is not None else None
        return reg, tuple(copies)
