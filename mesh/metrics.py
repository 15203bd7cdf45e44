"""What the router's and the runtime's Prometheus metrics share.

Each process keeps its metrics on its own explicit registry (never the global
one) and serves them on ``--metrics-listen``. Shared here: the request families
(``meshserve_requests_total{method,code}``, ``meshserve_request_seconds{method}``; the
router adds ``protocol`` = grpc|rest to both),
etcd operation errors, the policy in effect, per-model request counts (only
when the process's ``metrics_per_model`` setting is on: thousands of models
would otherwise mean thousands of series) and the /metrics HTTP server.
README "Metrics" lists every name with its ModelMesh counterpart.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from mesh.errors import MeshError
from mesh.settings import parse_host_port


class MetricsBase:
    def __init__(self, request_buckets: Sequence[float], *, per_model: bool = False,
                 protocols: bool = False) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.per_model = per_model
        #: The request families carry a ``protocol`` label (a process with several front doors).
        self.protocols = protocols
        extra = ["protocol"] if protocols else []
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self.requests = Counter("meshserve_requests", "Requests handled, by gRPC method and status code.",
                                ["method", "code", *extra], registry=r)
        self.request_seconds = Histogram("meshserve_request_seconds", "Request latency, by gRPC method.",
                                         ["method", *extra], buckets=tuple(request_buckets), registry=r)
        self.etcd_errors = Counter("meshserve_etcd_errors", "Registry (etcd) operations that failed, by operation.",
                                   ["op"], registry=r)
        self.policy_revision = Gauge("meshserve_policy_revision",
                                     "etcd revision of the policy document in effect (0: file or defaults).",
                                     registry=r)
        self.policy_errors = Counter("meshserve_policy_errors",
                                     "Policy documents this process refused to apply (the old one stayed).",
                                     registry=r)
        self.streams_open = Gauge("meshserve_streams_open", "ModelStreamInfer streams open now.", registry=r)
        self.stream_requests_in_flight = Gauge(
            "meshserve_stream_requests_in_flight", "Requests read from open streams and not yet answered.",
            registry=r)
        self.model_requests = Counter(
            "meshserve_model_requests", "Inference requests by model and code (only with metrics_per_model).",
            ["model", "code"], registry=r) if per_model else None
        self._server: Any = None
        self.endpoint = ""

    def observe_request(self, method: str, code: str, seconds: float, model_id: str = "",
                        protocol: str = "grpc") -> None:
        # Label lookups take a lock and build a key: keep the children (hot path).
        key = (method, code, protocol)
        children = self._children.get(key)
        if children is None:
            extra = (protocol,) if self.protocols else ()
            children = self._children[key] = (self.requests.labels(method, code, *extra),
                                              self.request_seconds.labels(method, *extra))
        children[0].inc()
        children[1].observe(seconds)
        if self.model_requests is not None and model_id:
            self.model_requests.labels(model_id, code).inc()

    @contextmanager
    def track(self, method: str, model_of: Callable[[], str] = lambda: "", protocol: str = "grpc") -> Iterator[None]:
        """Counts and times one request by its outcome (the status code a MeshError
        maps to, INTERNAL for anything else). ``model_of`` names the model, asked
        only when per-model series are on."""
        started = time.perf_counter()
        code = "OK"
        try:
            yield
        except MeshError as e:
            code = e.code
            raise
        except Exception:
            code = "INTERNAL"
            raise
        finally:
            self.observe_request(method, code, time.perf_counter() - started, model_of() if self.per_model else "",
                                 protocol)

    def etcd_error(self, op: str) -> None:
        self.etcd_errors.labels(op).inc()

    def serve(self, listen: str, ssl_context: ssl.SSLContext | None = None) -> str:
        """Starts the /metrics HTTP server (its own thread); returns HOST:PORT bound.
        With ``ssl_context``: HTTPS, each handshake on the request's own thread."""
        host, port = parse_host_port(listen, what="metrics-listen")
        if ssl_context is None:
            server, _thread = start_http_server(port, addr=host, registry=self.registry)
        else:
            server = _tls_metrics_server(host, port, self.registry, ssl_context)
        self._server = server
        self.endpoint = f"{host}:{server.server_port}"
        return self.endpoint

    @property
    def port(self) -> int:
        return int(self.endpoint.rpartition(":")[2]) if self.endpoint else 0

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _tls_metrics_server(host: str, port: int, registry: CollectorRegistry, ctx: ssl.SSLContext) -> Any:
    """prometheus_client's WSGI server, with TLS done per connection on the worker thread
    (its own ``certfile`` option handshakes in the accept loop, so one stalled client
    blocks every scrape, and never re-reads the certificate)."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client import make_wsgi_app
    from prometheus_client.exposition import ThreadingWSGIServer

    from mesh.security.http_tls import wrap_accepted

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    class TlsServer(ThreadingWSGIServer):
        def process_request_thread(self, request: Any, client_address: Any) -> None:
            wrapped = wrap_accepted(request, ctx)
            if wrapped is not None:
                super().process_request_thread(wrapped, client_address)

    if ":" in host:
        TlsServer.address_family = socket.AF_INET6
    server = make_server(host, port, make_wsgi_app(registry), TlsServer, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, name="metrics-https", daemon=True).start()
    return server
