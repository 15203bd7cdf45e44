"""`meshserve runtime`: a runtime process (ModelRuntime SPI + KServe V2 on one port).

Prints ``runtime <instance-id> ready on <endpoint>`` to stdout once it serves and
is registered (tests and ``meshserve up`` wait for that line); SIGTERM drains,
deregisters and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from mesh.cli.common import add_registry_arguments, add_tls_arguments, build_settings, run_until_signal, setup_logging
from mesh.fetcher import Fetcher, PullObserver
from mesh.runtime.settings import RuntimeSettings

HELP = "run a model runtime: loads models on command, evicts LRU, serves KServe V2 inference"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_registry_arguments(p)
    p.add_argument("--listen", help="HOST:PORT to serve gRPC on; port 0 picks one (env MESHSERVE_LISTEN; default 127.0.0.1:8085)")
    p.add_argument("--advertise", help="HOST:PORT routers dial (default: listen host, bound port)")
    p.add_argument("--instance-id", help="id in the registry (default: hostname + random suffix)")
    p.add_argument("--capacity", help="model memory in bytes, e.g. 8Gi (default: device/host memory minus a reserve)")
    p.add_argument("--cache-dir", help="folder for downloaded model files")
    p.add_argument("--storage-config", help="ModelMesh storage-config JSON file for the fetcher")
    p.add_argument("--metrics-listen", help="HOST:PORT for Prometheus /metrics (default: off)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--labels", help="k=v,k2=v2 labels for placement")
    p.add_argument("--zone", help="failure zone for placement")
    p.add_argument("--eviction-policy", help="lru, lfu, gdsf, ttl, adaptive, package.module:function or a JSON spec; used when "
                   "the policy document sets none for this runtime (env MESHSERVE_EVICTION_POLICY; default lru)")
    p.add_argument("--policy-file", help="policy document (JSON/YAML) used while the registry's config/policy is "
                   "unset (env MESHSERVE_POLICY_FILE)")
    add_tls_arguments(p)
    p.add_argument("--spi-token-file", help="tokens (one a line) a caller of the ModelRuntime SPI must present; "
                   "routers send theirs (env MESHSERVE_SPI_TOKEN_FILE)")
    p.add_argument("--spi-client-names", help="with --tls-client-ca: client certificate names (CN or SAN) allowed "
                   "to call the SPI, comma-separated (env MESHSERVE_SPI_CLIENT_NAMES)")
    p.add_argument("--model-roots", help="comma-separated folders local model paths must lie under, besides the "
                   "cache dir ('/' = any; env MESHSERVE_MODEL_ROOTS; default /mnt/models)")
    p.add_argument("--allow-pickle", action="store_true", default=None,
                   help="load pickle-based scikit-learn files (.joblib, .pkl, .pickle): unpickling runs the file's "
                   "code, so only where every model source is trusted (env MESHSERVE_ALLOW_PICKLE; default off)")
    p.add_argument("--custom-model-types", help="package.module:Class custom model types this runtime may load, "
                   "comma-separated (env MESHSERVE_CUSTOM_MODEL_TYPES)")


def make_fetcher(settings: RuntimeSettings, observer: PullObserver | None = None) -> Fetcher:
    """The puller, sharing the runtime's cache dir and storage config.

    Its other settings (cache budget, retries, part sizes...) come from the same
    ``MESHSERVE_*`` variables, read here at the entry point.
    """
    from puller.fetcher import PullerFetcher
    from puller.settings import PullerSettings

    overrides: dict[str, Any] = {}
    if settings.cache_dir:
        overrides["cache_dir"] = settings.cache_dir
    if settings.storage_config:
        overrides["storage_config"] = settings.storage_config
    return PullerFetcher(PullerSettings(**overrides), observer=observer)


def run(args: argparse.Namespace) -> int:
    settings = build_settings(RuntimeSettings, args)
    setup_logging(settings.log_level)

    async def main(stop: asyncio.Event) -> int:
        from mesh.runtime.metrics import RuntimeMetrics
        from mesh.runtime.server import RuntimeServer

        metrics = RuntimeMetrics(per_model=settings.metrics_per_model)
        fetcher = make_fetcher(settings, metrics)
        server = RuntimeServer(settings, fetcher, metrics=metrics)
        try:
            await server.start()
            print(f"runtime {server.instance_id} ready on {server.endpoint}", flush=True)
            await stop.wait()
        finally:
            await server.stop()
            close = getattr(fetcher, "close", None)
            if close is not None:
                await close()
        return 0

    return run_until_signal(main)
