"""The runtime process: one gRPC port, the model cache, and its registration.

``start()`` returns once the runtime serves and is registered; ``stop()`` is the
SIGTERM path: stop taking loads (the instance record says ``shutting_down``,
loadModel answers UNAVAILABLE), let in-flight requests finish (bounded by
``shutdown_grace_s``), close the server, unload, revoke the lease (the record and
every copy key vanish at once).

Messages up to 256 MiB are accepted and sent: V2 tensors travel in one message
(a batch of images is tens of MB) and gRPC's 4 MiB default would reject them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from importlib.metadata import PackageNotFoundError, version

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mesh.clock import Clock, SystemClock
from mesh.errors import FailedPrecondition
from mesh.fetcher import Fetcher
from mesh.registry import records as rec
from mesh.registry.etcd_store import EtcdStore
from mesh.registry.keys import KeySchema
from mesh.registry.registry import Registry
from mesh.runtime import inference, spi
from mesh.runtime.backends import BackendRegistry
from mesh.runtime.loader import ModelManager
from mesh.runtime.metrics import RuntimeMetrics
from mesh.runtime.policy import RuntimePolicy
from mesh.runtime.registration import Registration, RuntimeStats
from mesh.runtime.settings import RuntimeSettings
from mesh.runtime.sizing import check_device, derive_capacity
from mesh.security.auth import runtime_gates
from mesh.security.guard import GuardedServer, enable_reflection
from mesh.security.health_port import start_health_port
from mesh.security.http_tls import metrics_ssl_context
from mesh.security.tls import add_port, channel_tls, server_tls
from mesh.security.tokens import TokenFile
from mesh.settings import parse_host_port

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256 * 2**20
COPY_FLUSH_TIMEOUT_S = 5.0


def runtime_version() -> str:
    try:
        return version("meshserve")
    except PackageNotFoundError:
        return "0+unknown"


def advertised(listen: str, port: int, advertise: str) -> str:
    """What routers dial: ``advertise`` if set, else the listen host and bound port."""
    if advertise:
        return advertise
    host, _ = parse_host_port(listen, what="listen")
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class RuntimeServer:
    def __init__(self, settings: RuntimeSettings, fetcher: Fetcher, *, clock: Clock | None = None,
                 backends: BackendRegistry | None = None, metrics: RuntimeMetrics | None = None) -> None:
        self.settings = settings
        self._fetcher = fetcher
        self._clock = clock or SystemClock()
        self._backends = backends
        self.instance_id = settings.instance_id
        self.version = runtime_version()
        #: The entry point passes the metrics it also gave the fetcher (puller metrics).
        self.metrics = metrics or RuntimeMetrics(per_model=settings.metrics_per_model)
        self._policy: RuntimePolicy | None = None
        self.endpoint = ""
        self.ready = False
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self._store: EtcdStore | None = None
        self._registration: Registration | None = None
        self._manager: ModelManager | None = None
        self._health = health.aio.HealthServicer()
        self._late_warm_up: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, check_device, s.device)
        except RuntimeError as e:
            raise FailedPrecondition(str(e)) from None
        capacity = s.capacity
        if capacity is None:
            try:
                capacity = await loop.run_in_executor(None, derive_capacity, s.device, s.capacity_reserve)
            except (RuntimeError, ValueError) as e:
                raise FailedPrecondition(f"cannot derive the capacity: {e}") from None
        self._policy = RuntimePolicy(s, self.metrics)  # a bad --policy-file stops the start here
        tls = server_tls(s.tls_cert, s.tls_key, s.tls_client_ca)
        if s.spi_client_names and not s.tls_client_ca:
            raise FailedPrecondition("--spi-client-names needs --tls-client-ca: names come from verified client certificates")
        spi_tokens = TokenFile(s.spi_token_file) if s.spi_token_file else None
        self._backends = await loop.run_in_executor(None, self._prepare_backends)
        self._store = EtcdStore(s.etcd, timeout_s=s.etcd_timeout_s, on_error=self.metrics.etcd_error,
                                tls=channel_tls(s.etcd_ca, s.etcd_cert, s.etcd_key))
        await self._store.start()
        metrics_endpoint = self.metrics.serve(s.metrics_listen, metrics_ssl_context(tls, s.metrics_tls)) \
            if s.metrics_listen else ""

        self._server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),  # a second runtime on a taken port must fail, not share it
        ])
        try:
            port = add_port(self._server, s.listen, tls)
        except RuntimeError:
            raise FailedPrecondition(f"cannot listen on {s.listen}: the address is in use or not local") from None
        self.endpoint = advertised(s.listen, port, s.advertise)
        if metrics_endpoint:  # a wildcard bind is not dialable: name the advertised host
            m_host, m_port = parse_host_port(metrics_endpoint, what="metrics-listen")
            if m_host in ("", "0.0.0.0", "::"):
                metrics_endpoint = advertised(f"{parse_host_port(self.endpoint)[0]}:0", m_port, "")

        base = rec.InstanceRecord(
            instance_id=self.instance_id, endpoint=self.endpoint, metrics_endpoint=metrics_endpoint,
            capacity_bytes=capacity, loading_threads=s.max_loading_concurrency, labels=dict(s.labels),
            zone=s.zone, model_types=self._backends.model_types, device=s.device, version=self.version,
            start_ms=self._clock.now_ms(),
        )
        registration = Registration(
            Registry(self._store, KeySchema(s.mesh)), base, self._stats, lease_ttl_s=s.lease_ttl_s,
            clock=self._clock, record_interval_s=s.record_interval_s,
        )
        self._registration = registration
        self._manager = ModelManager(s, capacity, backends=self._backends, fetcher=self._fetcher,
                                     clock=self._clock, metrics=self.metrics, listener=registration)
        self.metrics.track_lru_age(self._manager.cache.oldest_lru_ms, self._clock.now_ms)
        await self._policy.start(self._manager, self._store, KeySchema(s.mesh))
        try:
            await loop.run_in_executor(None, self._backends.warm_up, s.device)
        except Exception as e:  # noqa: BLE001 - a broken framework install, reported plainly
            raise FailedPrecondition(f"warming up the model backends on {s.device} failed: {type(e).__name__}: {e}") from None

        async def flush(model_id: str) -> None:
            await registration.flush_copy(model_id, COPY_FLUSH_TIMEOUT_S)

        runtime = spi.ModelRuntimeServicer(self._manager, version=self.version, ready=lambda: self.ready,
                                           flush_copy=flush)
        infer = inference.InferenceServicer(self._manager, self.instance_id, self.metrics, self.version,
                                            ready=lambda: self.ready)
        # Registered through the guard: SPI calls only from routers, undecodable bodies INVALID_ARGUMENT.
        guarded = GuardedServer(self._server, runtime_gates(spi_tokens, s.spi_client_names))
        guarded.add_generic_rpc_handlers((runtime.handler(), infer.handler()))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, guarded)
        names = (spi.SERVICE.full_name, inference.SERVICE.full_name, health.SERVICE_NAME, reflection.SERVICE_NAME)
        enable_reflection(names, guarded)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.start()
        if s.health_listen:
            self._health_server = await start_health_port(s.health_listen, self._health)
        await registration.start()
        self.ready = True
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        # Slow imports no first request needs at once (skops) go on after ready.
        self._late_warm_up = loop.create_task(self._manager.warm_up_in_background(self._backends.warm_up_later))
        log.info("runtime %s serving on %s (capacity %d bytes, device %s, metrics %s)",
                 self.instance_id, self.endpoint, capacity, s.device, metrics_endpoint or "off")

    def _prepare_backends(self) -> BackendRegistry:
        """The backends (imports each library; those that do not import are left out)."""
        s = self.settings
        backends = self._backends
        if backends is None:
            try:
                backends = BackendRegistry.default(
                    s.intra_op_threads, s.model_types, allow_pickle=s.allow_pickle,
                    skops_trusted_types=s.skops_trusted_types, custom_model_types=s.custom_model_types,
                    onnx_full_optimization_min_bytes=s.onnx_full_optimization_min_bytes)
            except ValueError as e:  # a custom_model_types entry that does not import
                raise FailedPrecondition(str(e)) from None
        backends.prepare()
        if not backends.model_types:
            raise FailedPrecondition("no model type can be served: none of their libraries imports "
                                     "(pip install 'meshserve[cpu]')")
        return backends

    def _stats(self) -> RuntimeStats:
        m = self._manager
        if m is None:
            return RuntimeStats(0, 0, 0, 0)
        return RuntimeStats(m.cache.used, len(m.cache.loaded()), m.cache.oldest_lru_ms(), m.loads_in_progress,
                            m.rate.per_minute())

    async def _set_health(self, status: int) -> None:
        for name in ("", spi.SERVICE.full_name, inference.SERVICE.full_name):
            await self._health.set(name, status)

    async def stop(self) -> None:
        """Drains and deregisters; safe to call after a partial start."""
        self.ready = False
        grace = self.settings.shutdown_grace_s
        if self._late_warm_up is not None:
            self._late_warm_up.cancel()
        if self._manager is not None:
            self._manager.accepting = False
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._policy is not None:
            await self._policy.stop()
        if self._registration is not None:
            await self._registration.mark_shutting_down()
        if self._manager is not None and not await self._manager.wait_idle(grace):
            log.warning("%d requests still in flight after %.0fs; closing anyway", self._manager.in_flight, grace)
        if self._server is not None:
            await self._server.stop(1.0)
        if self._health_server is not None:
            await self._health_server.stop(0)
        if self._manager is not None:
            await self._manager.unload_all("shutdown")
            self._manager.close()
        if self._registration is not None:
            await self._registration.stop()
        self.metrics.close()
        if self._store is not None:
            await self._store.close()
        log.info("runtime %s stopped", self.instance_id)
