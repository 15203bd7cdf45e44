"""The router process: one gRPC port for management, admin and inference, and a REST port."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mesh.clock import Clock, SystemClock
from mesh.kserve.placement import with_serving_runtimes
from mesh.proto.meshserve.v1 import admin_pb2, admin_pb2_grpc
from mesh.proto.mmesh import model_mesh_pb2, model_mesh_pb2_grpc
from mesh.registry.etcd_store import EtcdStore
from mesh.registry.keys import KeySchema
from mesh.registry.mirror import RegistryMirror
from mesh.registry.registry import Registry
from mesh.registry.store import KVStore
from mesh.security.auth import header_token_check, router_gates
from mesh.security.guard import GuardedServer, enable_reflection
from mesh.security.health_port import start_health_port
from mesh.security.http_tls import metrics_ssl_context, server_ssl_context
from mesh.security.tls import add_port, channel_tls, server_tls
from mesh.security.tokens import TokenFile
from mesh.tasks import TaskSet
from router.admin import Admin
from router.forward import Forwarder
from router.kserve.index import ResourceIndex
from router.kserve.service import KServeService
from router.frontdoor import SERVICE as V2_SERVICE
from router.core import InferenceCore
from router.frontdoor import VERSION, FrontDoor
from mesh.registry import records as rec
from router.loader import Loader, active_failures
from router.management import Management
from router.metrics import RouterMetrics
from router.policy import RouterPolicy, tuned
from router.runtimes import RuntimeClients
from router.scaler import Scaler
from router.settings import RouterSettings
from router.rest.app import RestServer
from router.splits import SplitChooser
from router.table import RoutingTable

if TYPE_CHECKING:
    from router.xds.server import XdsCache

log = logging.getLogger(__name__)


class RouterServer:
    """``start()`` returns once the mirror is loaded and the port is serving."""

    def __init__(self, settings: RouterSettings, *, store: KVStore | None = None, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.metrics = RouterMetrics(per_model=settings.metrics_per_model)
        self.policy = RouterPolicy(settings, on_error=self.metrics.policy_errors.inc)
        self.metrics.policy_revision.set_function(lambda: self.policy.live.revision)
        # Components read the tunables the policy document may override through this view.
        settings = tuned(settings, self.policy.live)
        self.store: KVStore = store or EtcdStore(settings.etcd, timeout_s=settings.etcd_timeout_s,
                                                 on_error=self.metrics.etcd_error,
                                                 tls=channel_tls(settings.etcd_ca, settings.etcd_cert, settings.etcd_key))
        self.keys = KeySchema(settings.mesh)
        self.registry = Registry(self.store, self.keys)
        self.mirror = RegistryMirror(self.store, self.keys)
        self.table = RoutingTable(self.mirror, self.clock, splits=SplitChooser(settings.split_seed))
        self.table.on_split = lambda vmodel_id, model_id: self.metrics.split_requests.labels(vmodel_id, model_id).inc()
        self.tls = server_tls(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
        self.tokens = TokenFile(settings.auth_token_file) if settings.auth_token_file else None
        spi_token = TokenFile(settings.runtime_token_file).first() if settings.runtime_token_file else ""
        self.runtimes = RuntimeClients(settings.max_message_bytes,
                                       tls=channel_tls(settings.runtime_ca, settings.runtime_cert, settings.runtime_key),
                                       token=spi_token)
        self.resources = ResourceIndex(self.mirror)
        # InferenceService models go only where an applied ServingRuntime (or none) lets them.
        placement = with_serving_runtimes(self.policy.placement, self.resources.runtimes)
        self.loader = Loader(settings, self.registry, self.table, self.runtimes, self.clock,
                             placement=placement, spread_ties=self.policy.is_default_placement)
        self.loader.on_load = lambda outcome: self.metrics.loads.labels(outcome).inc()
        self.forwarder = Forwarder(self.table, self.loader, self.runtimes, self.clock, settings.max_attempts,
                                   self.metrics)
        self.tasks = TaskSet("router")
        self.management = Management(settings, self.registry, self.table, self.loader, self.runtimes, self.clock, self.tasks)
        self.kserve = KServeService(self.registry, self.table, self.management, self.loader, self.resources,
                                    self.clock, self._public_urls)
        self.admin = Admin(self.registry, self.table, self.clock, self.management.status, self.policy.live,
                           vmodels=self.management.vmodels, kserve=self.kserve)
        self.frontdoor = FrontDoor(self.forwarder, self.table, settings.default_timeout_s, self.metrics)
        #: What front doors other than gRPC (REST) call into.
        self.core = InferenceCore(self.forwarder, self.table, self.clock, settings.default_timeout_s, self.metrics)
        self.rest: RestServer | None = None
        self.scaler = Scaler(settings, self.table, self.loader, self.forwarder, self.management,
                             self.runtimes, self.clock)
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self.xds: XdsCache | None = None
        self.port = 0
        self.metrics_port = 0
        #: The SDS folder for Envoy's runtime TLS when the router made one (removed on stop).
        self._xds_tmp = ""

    @property
    def endpoint(self) -> str:
        host = self.settings.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    @property
    def rest_scheme(self) -> str:
        """https when the REST port serves TLS (the router's certificate), else http."""
        return "https" if self.tls is not None else "http"

    @property
    def rest_endpoint(self) -> str:
        """HOST:PORT of the REST listener ("" when there is none)."""
        return self.rest.endpoint if self.rest is not None else ""

    def _public_urls(self) -> tuple[str, str]:
        """gRPC and REST URLs shown in InferenceService statuses."""
        rest = self.settings.public_rest_url or (f"{self.rest_scheme}://{self.rest_endpoint}" if self.rest_endpoint else "")
        return (self.settings.public_grpc_url or f"grpc://{self.endpoint}", rest)

    async def start(self) -> None:
        await self.store.start()
        await self.mirror.start()
        self.policy.follow(self.mirror)
        opts = [("grpc.max_send_message_length", self.settings.max_message_bytes),
                ("grpc.max_receive_message_length", self.settings.max_message_bytes)]
        server = grpc.aio.server(options=opts)
        # Registered through the guard: undecodable bodies are INVALID_ARGUMENT, tokens checked.
        guarded = GuardedServer(server, router_gates(self.tokens, self.settings.auth_inference))
        model_mesh_pb2_grpc.add_ModelMeshServicer_to_server(self.management, guarded)
        admin_pb2_grpc.add_MeshAdminServicer_to_server(self.admin, guarded)
        guarded.add_generic_rpc_handlers([self.frontdoor.handler()])
        self._add_xds(server)  # Envoy's xDS: not a client API
        health_pb2_grpc.add_HealthServicer_to_server(self.health, guarded)
        enable_reflection([
            model_mesh_pb2.DESCRIPTOR.services_by_name["ModelMesh"].full_name,
            admin_pb2.DESCRIPTOR.services_by_name["MeshAdmin"].full_name,
            V2_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME,
        ], guarded)
        self.port = add_port(server, self.settings.listen, self.tls)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.settings.listen}")
        await server.start()
        self._server = server
        if self.settings.rest_listen:
            authorize = header_token_check(self.tokens) if self.tokens and self.settings.auth_inference else None
            rest = RestServer(self.core, self.settings.rest_listen, self.settings.max_message_bytes, VERSION,
                              authorize=authorize,
                              ssl_context=server_ssl_context(self.tls) if self.tls is not None else None)
            try:
                await rest.start()
            except OSError:
                await server.stop(0)
                raise
            self.rest = rest
        if self.settings.health_listen:
            self._health_server = await start_health_port(self.settings.health_listen, self.health)
        m = self.metrics
        m.registered.set_function(lambda: len(self.mirror.models))
        m.instances.set_function(lambda: len(self.mirror.instances))
        m.loaded_copies.set_function(lambda: sum(len(c) for c in self.mirror.copies.values()))
        m.failing_models.set_function(self._failing_models)
        m.track_copies(self._loaded_copies)
        if self.settings.metrics_listen:
            m.serve(self.settings.metrics_listen, metrics_ssl_context(self.tls, self.settings.metrics_tls))
            self.metrics_port = m.port
        self.tasks.spawn(self.scaler.run(), "scaler")
        self.management.vmodels.resume()
        self.frontdoor.set_ready(True)
        self.core.set_ready(True)
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("router serving on %s%s", self.endpoint, f", REST on {self.rest_endpoint}" if self.rest else "")

    def _add_xds(self, server: grpc.aio.Server) -> None:
        """Envoy's configuration over ADS on the same port (README "Envoy"), when xds-protos is installed."""
        self.xds = None
        if not self.settings.xds:
            return
        try:
            from router.xds.server import add_to_server
        except ImportError:
            log.info("xDS off: xds-protos is not installed (pip install 'meshserve[envoy]')")
            return
        self.xds = add_to_server(server, self.mirror, self.metrics.registry, self.tasks, self.clock,
                                 runtime_tls=self._xds_runtime_tls())
        self.xds.start()

    def _xds_runtime_tls(self) -> Any:
        """TLS for the runtime clusters Envoy gets, when the router calls runtimes over TLS."""
        s = self.settings
        if not s.runtime_ca:
            return None
        from router.xds.tls import runtime_secrets, runtime_socket, write_secrets

        folder = s.xds_sds_dir
        if not folder:
            folder = self._xds_tmp = tempfile.mkdtemp(prefix="meshserve-xds-sds-")
        write_secrets(Path(folder), runtime_secrets(s.runtime_ca, s.runtime_cert, s.runtime_key))
        return runtime_socket(folder, bool(s.runtime_cert))

    def _loaded_copies(self) -> dict[str, int]:
        copies = self.mirror.copies
        return {m: sum(c.state == rec.LOADED for c in copies.get(m, {}).values()) for m in self.mirror.models}

    def _failing_models(self) -> int:
        now, ttl = self.clock.now_ms(), self.policy.live.tunable("failure_ttl_s", self.settings.failure_ttl_s)
        return sum(1 for m in list(self.mirror.models.values()) if active_failures(m, now, ttl))

    async def _set_health(self, status: int) -> None:
        res = self.health.set("", status)
        if asyncio.iscoroutine(res):
            await res

    async def stop(self, grace_s: float = 5.0) -> None:
        self.frontdoor.set_ready(False)
        self.core.set_ready(False)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        # Both doors drain at once: in-flight REST requests still need the runtime clients.
        doors = [self._server.stop(grace_s)] if self._server is not None else []
        if self.rest is not None:
            doors.append(self.rest.stop())
        await asyncio.gather(*doors)
        self.rest = None
        if self._health_server is not None:
            await self._health_server.stop(0)
        await self.tasks.close()
        await self.mirror.stop()
        await self.runtimes.close()
        await self.store.close()
        self.metrics.close()
        if self._xds_tmp:
            shutil.rmtree(self._xds_tmp, ignore_errors=True)
