"""The runtime's Prometheus metrics, on an explicit registry.

No per-model labels (thousands of models would mean thousands of series); the
``method``/``code``/``result``/``reason`` labels have a handful of values each.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from mesh.settings import parse_host_port

log = logging.getLogger(__name__)

_LOAD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_REQUEST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class RuntimeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.models_loaded = Gauge("meshserve_models_loaded", "Models loaded in this runtime", registry=r)
        self.capacity_bytes = Gauge("meshserve_capacity_bytes", "Model memory this runtime may hold", registry=r)
        self.used_bytes = Gauge(
            "meshserve_used_bytes", "Bytes charged to loaded and loading models (max of predicted, measured)",
            registry=r)
        self.loads_in_progress = Gauge("meshserve_loads_in_progress", "Model loads running now", registry=r)
        self.loads = Counter(
            "meshserve_model_loads", "Model loads attempted, by result (success, failure, cancelled)",
            ["result"], registry=r)
        self.load_seconds = Histogram(
            "meshserve_model_load_seconds", "Time from load start (after queueing) to loaded",
            buckets=_LOAD_BUCKETS, registry=r)
        self.unloads = Counter(
            "meshserve_model_unloads", "Models unloaded, by reason (requested, evicted, shutdown)",
            ["reason"], registry=r)
        self.evictions = Counter("meshserve_evictions", "Models evicted to make room", registry=r)
        self.requests = Counter(
            "meshserve_requests", "Inference requests by method and status code", ["method", "code"], registry=r)
        self.request_seconds = Histogram(
            "meshserve_request_seconds", "Inference request time in the runtime (decode, run, encode)",
            ["method"], buckets=_REQUEST_BUCKETS, registry=r)
        self._server: Any = None
        self.endpoint = ""

    def serve(self, listen: str) -> str:
        """Starts the /metrics HTTP server (its own thread); returns HOST:PORT bound."""
        host, port = parse_host_port(listen, what="metrics-listen")
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        self.endpoint = f"{host}:{server.server_port}"
        return self.endpoint

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
