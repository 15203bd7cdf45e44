"""The router's Prometheus metrics, on an explicit registry (never the global one).

Per-model labels are off unless ``metrics_per_model`` is set: with thousands of
models they would explode the series count. Copies per model are exported as a
distribution (``meshserve_models_by_copies{copies="0".."4+"}``), or per model
(``meshserve_model_copies{model}``) with ``metrics_per_model``. Names follow
``meshserve_*`` (README "Metrics" lists them with their ModelMesh counterparts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mesh.metrics import MetricsBase

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
COPY_BUCKETS = ("0", "1", "2", "3", "4+")


class CopiesCollector(Collector):
    """Loaded copies per registered model, read from the mirror at scrape time."""

    def __init__(self, copies_of: Callable[[], Mapping[str, int]], per_model: bool) -> None:
        self._copies_of = copies_of
        self._per_model = per_model

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self._copies_of()
        hist = GaugeMetricFamily("meshserve_models_by_copies", "Registered models by their number of LOADED copies.",
                                 labels=["copies"])
        buckets = dict.fromkeys(COPY_BUCKETS, 0)
        for n in counts.values():
            buckets[str(n) if n < 4 else "4+"] += 1
        for label, value in buckets.items():
            hist.add_metric([label], value)
        yield hist
        if self._per_model:
            each = GaugeMetricFamily("meshserve_model_copies", "LOADED copies of each model (metrics_per_model).",
                                     labels=["model"])
            for model_id, n in sorted(counts.items()):
                each.add_metric([model_id], n)
            yield each


class RouterMetrics(MetricsBase):
    def __init__(self, *, per_model: bool = False) -> None:
        # protocol = grpc | rest: the router has two front doors (README "REST").
        super().__init__(LATENCY_BUCKETS, per_model=per_model, protocols=True)
        r = self.registry
        self.hits = Counter("meshserve_cache_hits", "Inference requests that found a loaded copy.", registry=r)
        self.misses = Counter("meshserve_cache_misses", "Inference requests that had to wait for a load.",
                              registry=r)
        self.miss_seconds = Histogram("meshserve_cache_miss_seconds",
                                      "Time an inference request waited for its model to load (misses).",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.loads = Counter("meshserve_router_loads", "Loads this router asked runtimes for, by outcome.",
                             ["outcome"], registry=r)
        self.retries = Counter("meshserve_request_retries",
                               "Inference attempts retried on another copy, by reason.", ["reason"], registry=r)
        # Labelled by vmodel and target: only vmodels with a traffic split, a handful per mesh.
        self.split_requests = Counter("meshserve_split_requests", "Requests a traffic split sent to each target.",
                                      ["vmodel", "model"], registry=r)
        self.registered = Gauge("meshserve_registered_models", "Models in the registry (mirror).", registry=r)
        self.loaded_copies = Gauge("meshserve_loaded_copies", "LOADED copies across the mesh (mirror).", registry=r)
        self.instances = Gauge("meshserve_instances", "Runtime instances registered (mirror).", registry=r)
        self.failing_models = Gauge("meshserve_models_with_failures",
                                    "Registered models with recent load failures (mirror).", registry=r)

    def track_copies(self, copies_of: Callable[[], Mapping[str, int]]) -> None:
        self.registry.register(CopiesCollector(copies_of, self.per_model))
