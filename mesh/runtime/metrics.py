"""The runtime's Prometheus metrics, on an explicit registry.

No per-model labels unless ``metrics_per_model`` is on (thousands of models
would mean thousands of series); the ``method``/``code``/``result``/``reason``/
``policy`` labels have a handful of values each. The puller reports through
:meth:`RuntimeMetrics.pull_observer` (the hook :class:`mesh.fetcher.PullObserver`).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from mesh.metrics import MetricsBase

_LOAD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_REQUEST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
_AGE_BUCKETS = (1, 10, 60, 300, 900, 1800, 3600, 3 * 3600, 12 * 3600, 86400, 7 * 86400)
_SIZE_BUCKETS = tuple(2.0**k for k in range(16, 38, 2))  # 64 KiB .. 128 GiB


class RuntimeMetrics(MetricsBase):
    def __init__(self, *, per_model: bool = False) -> None:
        super().__init__(_REQUEST_BUCKETS, per_model=per_model)
        r = self.registry
        self.models_loaded = Gauge("meshserve_models_loaded", "Models loaded in this runtime", registry=r)
        self.capacity_bytes = Gauge("meshserve_capacity_bytes", "Model memory this runtime may hold", registry=r)
        self.used_bytes = Gauge(
            "meshserve_used_bytes", "Bytes charged to loaded and loading models (max of predicted, measured)",
            registry=r)
        self.lru_age_seconds = Gauge("meshserve_lru_age_seconds",
                                     "Seconds since the least recently used loaded model was last used", registry=r)
        self.loads_in_progress = Gauge("meshserve_loads_in_progress", "Model loads running now", registry=r)
        self.loads = Counter(
            "meshserve_model_loads", "Model loads attempted, by result (success, failure, cancelled)",
            ["result"], registry=r)
        self.load_seconds = Histogram(
            "meshserve_model_load_seconds", "Time from load start (after queueing; fetch included) to loaded",
            buckets=_LOAD_BUCKETS, registry=r)
        self.load_queue_seconds = Histogram(
            "meshserve_load_queue_seconds", "Time a load waited for a loading slot", buckets=_LOAD_BUCKETS, registry=r)
        self.model_size_bytes = Histogram(
            "meshserve_loaded_model_size_bytes", "Charged size of each model loaded", buckets=_SIZE_BUCKETS, registry=r)
        self.unloads = Counter(
            "meshserve_model_unloads", "Models unloaded, by reason (requested, evicted, expired, shutdown)",
            ["reason"], registry=r)
        self.unload_seconds = Histogram(
            "meshserve_model_unload_seconds", "Time to unload a model (its framework objects)",
            buckets=_LOAD_BUCKETS, registry=r)
        self.evictions = Counter(
            "meshserve_evictions", "Models evicted, by eviction policy and reason (capacity: room for a load; "
            "idle: the ttl policy's idle expiry)", ["policy", "reason"], registry=r)
        self.age_at_eviction = Histogram(
            "meshserve_age_at_eviction_seconds", "Seconds since an evicted model was last used",
            buckets=_AGE_BUCKETS, registry=r)
        runs = Counter("meshserve_inference_runs", "Inference runs by where they ran: inline on the event loop "
                       "(models measured to run in under inline_inference_max_us) or in the inference pool",
                       ["where"], registry=r)
        self.runs_inline, self.runs_pool = runs.labels("inline"), runs.labels("pool")
        self.pulls = Counter("meshserve_puller_pulls", "Model pulls from storage, by scheme and result",
                             ["scheme", "result"], registry=r)
        self.pull_bytes = Counter("meshserve_puller_bytes", "Bytes pulled from storage, by scheme", ["scheme"],
                                  registry=r)
        self.pull_seconds = Histogram("meshserve_puller_pull_seconds", "Time of one model pull, by scheme",
                                      ["scheme"], buckets=_LOAD_BUCKETS, registry=r)
        self.pull_cache_hits = Counter("meshserve_puller_cache_hits",
                                       "Fetches served from the local disk cache without contacting storage",
                                       registry=r)

    def evicted(self, policy: str, reason: str, idle_seconds: float) -> None:
        self.evictions.labels(policy, reason).inc()
        self.age_at_eviction.observe(max(0.0, idle_seconds))

    def track_lru_age(self, oldest_lru_ms: Callable[[], int], now_ms: Callable[[], int]) -> None:
        """The LRU age gauge reads the cache at scrape time (0 with nothing loaded)."""
        self.lru_age_seconds.set_function(lambda: (now_ms() - oldest) / 1000 if (oldest := oldest_lru_ms()) else 0.0)

    # -- mesh.fetcher.PullObserver ------------------------------------------

    def pulled(self, scheme: str, size_bytes: int, seconds: float) -> None:
        self.pulls.labels(scheme, "success").inc()
        self.pull_bytes.labels(scheme).inc(size_bytes)
        self.pull_seconds.labels(scheme).observe(seconds)

    def pull_failed(self, scheme: str, code: str, seconds: float) -> None:
        self.pulls.labels(scheme, code).inc()
        self.pull_seconds.labels(scheme).observe(seconds)

    def cache_hit(self) -> None:
        self.pull_cache_hits.inc()
