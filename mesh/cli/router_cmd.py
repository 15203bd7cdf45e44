"""`meshserve router`: the single front door."""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING

from mesh.cli.common import add_registry_arguments, add_tls_arguments, build_settings, run_until_signal, setup_logging

if TYPE_CHECKING:
    from router.settings import RouterSettings

HELP = "run a router: ModelMesh management API, MeshAdmin and KServe V2 inference on one port, REST on another"
#: The REST port when neither --rest-listen nor MESHSERVE_REST_LISTEN says (KServe's 8008).
DEFAULT_REST_LISTEN = "0.0.0.0:8008"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", help="HOST:PORT to serve on (env MESHSERVE_LISTEN; default 127.0.0.1:8033)")
    p.add_argument("--rest-listen", dest="rest_listen",
                   help="HOST:PORT for KServe V1/V2 REST (env MESHSERVE_REST_LISTEN; default "
                        f"{DEFAULT_REST_LISTEN}; '' turns it off)")
    add_registry_arguments(p)
    p.add_argument("--metrics-listen", dest="metrics_listen",
                   help="HOST:PORT for Prometheus metrics (env MESHSERVE_METRICS_LISTEN)")
    p.add_argument("--policy-file", dest="policy_file",
                   help="policy document (JSON/YAML) used while the registry's config/policy is unset "
                        "(env MESHSERVE_POLICY_FILE)")
    add_tls_arguments(p)
    p.add_argument("--auth-token-file", help="bearer tokens, one a line (re-read on change): management calls need "
                   "'authorization: Bearer <token>' (env MESHSERVE_AUTH_TOKEN_FILE)")
    p.add_argument("--auth-inference", action="store_true", default=None,
                   help="with --auth-token-file: inference needs a token too (env MESHSERVE_AUTH_INFERENCE)")
    p.add_argument("--runtime-ca", help="PEM CA of the runtimes' certificates: call runtimes over TLS "
                   "(env MESHSERVE_RUNTIME_CA)")
    p.add_argument("--runtime-cert", help="PEM client certificate presented to runtimes (env MESHSERVE_RUNTIME_CERT)")
    p.add_argument("--runtime-key", help="PEM key of --runtime-cert (env MESHSERVE_RUNTIME_KEY)")
    p.add_argument("--xds-sds-dir", help="with --runtime-ca: folder for the SDS files Envoy's runtime clusters use for "
                   "TLS; Envoy must see it at the same path (env MESHSERVE_XDS_SDS_DIR; default: a temp folder)")
    p.add_argument("--runtime-token-file", help="file whose first token is presented on SPI calls to runtimes "
                   "(their --spi-token-file; env MESHSERVE_RUNTIME_TOKEN_FILE)")


def settings_from(args: argparse.Namespace) -> "RouterSettings":
    """Flags over ``MESHSERVE_*``; REST on DEFAULT_REST_LISTEN unless either says otherwise."""
    from router.settings import RouterSettings

    settings = build_settings(RouterSettings, args)
    if "rest_listen" not in settings.model_fields_set:  # neither the flag nor the environment said
        settings = build_settings(RouterSettings, args, rest_listen=DEFAULT_REST_LISTEN)
    return settings


def run(args: argparse.Namespace) -> int:
    from router.server import RouterServer

    settings = settings_from(args)
    setup_logging(settings.log_level)

    async def main(stop: asyncio.Event) -> int:
        server = RouterServer(settings)
        await server.start()
        rest = f" (REST on {server.rest_endpoint})" if server.rest_endpoint else ""
        print(f"router ready on {server.endpoint}{rest}", flush=True)
        await stop.wait()
        await server.stop()
        return 0

    return run_until_signal(main)
