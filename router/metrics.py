"""The router's Prometheus metrics, on an explicit registry (never the global one).

Per-model labels are off: with thousands of models they would explode the
series count. Names follow ``meshserve_*`` (README lists them with their
ModelMesh counterparts).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from mesh.settings import parse_host_port

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("meshserve_requests_total", "Requests handled, by gRPC method and status code.",
                                ["method", "code"], registry=r)
        self.latency = Histogram("meshserve_request_seconds", "Request latency at the router, by method.",
                                 ["method"], buckets=LATENCY_BUCKETS, registry=r)
        self.hits = Counter("meshserve_cache_hits_total", "Inference requests that found a loaded copy.", registry=r)
        self.misses = Counter("meshserve_cache_misses_total", "Inference requests that had to wait for a load.",
                              registry=r)
        self.loads = Counter("meshserve_router_loads_total", "Loads this router asked runtimes for, by outcome.",
                             ["outcome"], registry=r)
        self.retries = Counter("meshserve_request_retries_total",
                               "Inference attempts retried on another copy, by reason.", ["reason"], registry=r)
        self.registered = Gauge("meshserve_registered_models", "Models in the registry (mirror).", registry=r)
        self.loaded_copies = Gauge("meshserve_loaded_copies", "LOADED copies across the mesh (mirror).", registry=r)
        self.instances = Gauge("meshserve_instances", "Runtime instances registered (mirror).", registry=r)
        self.etcd_errors = Counter("meshserve_etcd_errors_total", "Registry operations that failed.", registry=r)

        self._server: object | None = None

    def serve(self, listen: str) -> int:
        """Starts the /metrics HTTP endpoint; returns the bound port."""
        host, port = parse_host_port(listen, what="metrics address")
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()  # type: ignore[attr-defined]
            self._server.server_close()  # type: ignore[attr-defined]
            self._server = None
