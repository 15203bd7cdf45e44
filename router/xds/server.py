"""The ADS stream Envoy dials (state of the world): clusters and routes from the mirror.

``XdsCache`` rebuilds the snapshot when the mirror changes (coalesced over a
short window, skipped when the hashes did not move) and wakes every stream.
While no Envoy is connected it only notes that the snapshot is stale and builds
it when the next one connects (or someone reads it): a router without Envoy in
front pays nothing per model load or eviction.
Each stream sends one response at a time and waits for its ACK or NACK, in the
make-before-break order: clusters first (the new ones beside those the routes
on Envoy still use), then routes, then clusters again without the unused ones.
A NACKed version is logged, counted and not sent again; the next snapshot is.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2
from prometheus_client import CollectorRegistry, Counter, Gauge

from mesh.clock import Clock
from mesh.registry.keys import ParsedKey
from mesh.registry.mirror import RegistryMirror
from mesh.tasks import TaskSet
from router.xds.snapshot import CLUSTER_TYPE, ROUTE_TYPE, Snapshot, build_snapshot, version_of
from router.xds.view import XdsView, view_of

log = logging.getLogger(__name__)

_RELEVANT = {"model", "vmodel", "instance", "copy"}


class XdsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.pushes = Counter("meshserve_xds_pushes", "xDS responses sent to Envoy, by resource type.",
                              ["type"], registry=registry)
        self.nacks = Counter("meshserve_xds_nacks", "xDS responses Envoy rejected, by resource type.",
                             ["type"], registry=registry)
        self.streams = Gauge("meshserve_xds_streams", "Envoys connected over ADS.", registry=registry)
        self.builds = Counter("meshserve_xds_snapshots", "xDS snapshots built with a new version.",
                              registry=registry)


class XdsCache:
    """The current snapshot; ``start`` follows the mirror until the task set closes.

    A cluster the routes no longer use lingers in the snapshot for ``linger_s``: a
    request that started on an older route may still retry through it.
    """

    def __init__(self, mirror: RegistryMirror, metrics: XdsMetrics, tasks: TaskSet, clock: Clock, *,
                 debounce_s: float = 0.02, linger_s: float = 30.0,
                 runtime_tls: base_pb2.TransportSocket | None = None) -> None:
        self._mirror = mirror
        self._runtime_tls = runtime_tls
        self._metrics = metrics
        self._tasks = tasks
        self._clock = clock
        self._debounce_s = debounce_s
        self._linger_s = linger_s
        self._dirty = asyncio.Event()
        self._listeners: set[asyncio.Event] = set()
        #: cluster name -> (the cluster, monotonic time it leaves the snapshot).
        self._lingering: dict[str, tuple[cluster_pb2.Cluster, float]] = {}
        self._view: XdsView = view_of(mirror)
        self._snapshot: Snapshot = build_snapshot(self._view, runtime_tls)
        #: The mirror changed while no Envoy listened: rebuild before the snapshot is next read.
        self._stale = False
        mirror.subscribe(self._on_change)

    def _fresh(self) -> None:
        if self._stale:
            self._stale = False
            self._rebuild_logged()

    @property
    def snapshot(self) -> Snapshot:
        self._fresh()
        return self._snapshot

    @property
    def view(self) -> XdsView:
        """The view the current snapshot was built from."""
        self._fresh()
        return self._view

    def _on_change(self, key: ParsedKey, record: object) -> None:
        if key.kind in _RELEVANT:
            if key.kind == "model" and record is not None and key.name not in self._mirror.copies:
                return  # a (new) model without copies routes nowhere yet: a fleet's registration rebuilds nothing
            if self._listeners:
                self._dirty.set()
            else:
                self._stale = True  # nobody to send it to: built when an Envoy connects

    def start(self) -> None:
        self._tasks.spawn(self._follow(), "xds-snapshots")

    def listen(self) -> asyncio.Event:
        self._fresh()  # the first Envoy after a quiet spell: build what it will be sent
        ev = asyncio.Event()
        self._listeners.add(ev)
        return ev

    def forget(self, ev: asyncio.Event) -> None:
        self._listeners.discard(ev)

    async def _follow(self) -> None:
        while True:
            timeout = None
            if self._lingering:
                timeout = max(0.0, min(t for _, t in self._lingering.values()) - self._clock.monotonic())
            try:
                async with asyncio.timeout(timeout):
                    await self._dirty.wait()
                # Coalesce a burst of changes (a runtime's copies going at once) into one push.
                await asyncio.sleep(self._debounce_s)
            except TimeoutError:
                pass  # a lingering cluster is due to go
            self._dirty.clear()
            self._stale = False
            self._rebuild_logged()

    def _rebuild_logged(self) -> None:
        try:
            self._rebuild()
        except Exception:  # a bug here must not stop later snapshots
            log.exception("building the xDS snapshot failed; Envoy keeps the previous one")

    def _rebuild(self) -> None:
        view = view_of(self._mirror)
        snap = build_snapshot(view, self._runtime_tls)
        now = self._clock.monotonic()
        old = self._snapshot
        for name, cluster in old.clusters.items():
            if name not in snap.clusters and name not in self._lingering:
                self._lingering[name] = (cluster, now + self._linger_s)
        self._lingering = {n: (c, t) for n, (c, t) in self._lingering.items() if t > now and n not in snap.clusters}
        if self._lingering:
            clusters = {**snap.clusters, **{n: c for n, (c, _) in self._lingering.items()}}
            snap = replace(snap, clusters=clusters, cluster_version=version_of(clusters[k] for k in sorted(clusters)))
        if (snap.cluster_version, snap.route_version) == (old.cluster_version, old.route_version):
            return
        self._view, self._snapshot = view, snap
        self._metrics.builds.inc()
        for ev in self._listeners:
            ev.set()


@dataclass
class _Sent:
    version: str = ""
    nonce: str = ""
    answered: bool = True
    #: The version Envoy last accepted, and the one it last refused.
    acked: str = ""
    rejected: str = ""
    #: CDS: the clusters in the last accepted response.
    acked_clusters: dict[str, cluster_pb2.Cluster] = field(default_factory=dict)
    pending_clusters: dict[str, cluster_pb2.Cluster] = field(default_factory=dict)


class AdsStream:
    """One Envoy's stream: what it asked for, what it holds, what to send next."""

    def __init__(self, cache: XdsCache, metrics: XdsMetrics, nonces: Callable[[], str]) -> None:
        self._cache = cache
        self._metrics = metrics
        self._nonces = nonces
        self._subscribed: set[str] = set()
        self._sent = {CLUSTER_TYPE: _Sent(), ROUTE_TYPE: _Sent()}
        #: Clusters the routes Envoy accepted point at (kept until routes move off them).
        self._route_clusters: set[str] = set()
        self._pending_route_clusters: set[str] = set()
        self.node = ""

    def on_request(self, req: discovery_pb2.DiscoveryRequest) -> None:
        if req.node.id:
            self.node = req.node.id
        sent = self._sent.get(req.type_url)
        if sent is None:
            return  # a type we do not serve (no LDS/EDS: the gateway's bootstrap does not ask)
        self._subscribed.add(req.type_url)
        if not req.response_nonce or req.response_nonce != sent.nonce:
            return  # the first request, or an answer to an older response
        sent.answered = True
        short = req.type_url.rsplit(".", 1)[-1]
        if req.HasField("error_detail"):
            sent.rejected = sent.version
            self._metrics.nacks.labels(short).inc()
            log.error("Envoy %s rejected %s version %s: %s", self.node, short, sent.version, req.error_detail.message)
            return
        sent.acked = sent.version
        if req.type_url == CLUSTER_TYPE:
            sent.acked_clusters = sent.pending_clusters
        else:
            self._route_clusters = self._pending_route_clusters

    def next_response(self) -> discovery_pb2.DiscoveryResponse | None:
        """The response to send now, or None (waiting for an answer or a change)."""
        if not all(s.answered for s in self._sent.values()):
            return None
        snap = self._cache.snapshot
        cds, rds = self._sent[CLUSTER_TYPE], self._sent[ROUTE_TYPE]
        if CLUSTER_TYPE in self._subscribed:
            want = dict(snap.clusters)
            if rds.acked != snap.route_version:
                # Routes on Envoy may still point at clusters the new snapshot drops: keep them.
                for name in self._route_clusters - want.keys():
                    if name in cds.acked_clusters:
                        want[name] = cds.acked_clusters[name]
            version = version_of(want[k] for k in sorted(want))
            if version not in (cds.version, cds.rejected):
                cds.pending_clusters = want
                return self._respond(CLUSTER_TYPE, version, [want[k] for k in sorted(want)])
        if ROUTE_TYPE in self._subscribed and snap.route_version not in (rds.version, rds.rejected):
            if CLUSTER_TYPE in self._subscribed and not snap.clusters.keys() <= cds.acked_clusters.keys():
                return None  # the clusters these routes need are not on Envoy (refused?): wait
            self._pending_route_clusters = set(snap.clusters)
            return self._respond(ROUTE_TYPE, snap.route_version, [snap.routes])
        return None

    def _respond(self, type_url: str, version: str, resources: list[object]) -> discovery_pb2.DiscoveryResponse:
        sent = self._sent[type_url]
        sent.version, sent.nonce, sent.answered = version, self._nonces(), False
        packed = []
        for r in resources:
            a = any_pb2.Any()
            a.Pack(r)  # type: ignore[arg-type]
            packed.append(a)
        self._metrics.pushes.labels(type_url.rsplit(".", 1)[-1]).inc()
        return discovery_pb2.DiscoveryResponse(version_info=version, resources=packed, type_url=type_url,
                                               nonce=sent.nonce)


class AdsServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, cache: XdsCache, metrics: XdsMetrics) -> None:
        self._cache = cache
        self._metrics = metrics
        counter = itertools.count(1)
        self._nonces = lambda: str(next(counter))

    async def StreamAggregatedResources(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:
        stream = AdsStream(self._cache, self._metrics, self._nonces)
        wake = self._cache.listen()
        self._metrics.streams.inc()

        async def read() -> None:
            while True:
                req = await context.read()
                if req is grpc.aio.EOF:
                    return
                stream.on_request(req)
                wake.set()

        reader = asyncio.get_running_loop().create_task(read(), name="xds-read")
        try:
            while not reader.done():
                resp = stream.next_response()
                if resp is not None:
                    await context.write(resp)
                    continue
                wake.clear()
                waiter = asyncio.ensure_future(wake.wait())
                await asyncio.wait({waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
            log.info("Envoy %s closed its xDS stream", stream.node or "(unnamed)")
        finally:
            reader.cancel()
            self._cache.forget(wake)
            self._metrics.streams.dec()

    async def DeltaAggregatedResources(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "meshserve serves state-of-the-world ADS: set ads_config api_type GRPC, not DELTA_GRPC")


def add_to_server(server: grpc.aio.Server, mirror: RegistryMirror, registry: CollectorRegistry,
                  tasks: TaskSet, clock: Clock, runtime_tls: base_pb2.TransportSocket | None = None) -> XdsCache:
    """``runtime_tls``: the runtime clusters' transport socket (router/xds/tls.py); None = plaintext."""
    metrics = XdsMetrics(registry)
    cache = XdsCache(mirror, metrics, tasks, clock, runtime_tls=runtime_tls)
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(AdsServicer(cache, metrics), server)
    return cache
