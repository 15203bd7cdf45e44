"""`meshserve gateway`: Envoy as the front door, programmed by a router over xDS."""

from __future__ import annotations

import argparse
import json
import os
import sys

from mesh.cli.common import build_settings

HELP = ("run Envoy as the front door (gRPC; REST too with --rest-listen): requests naming a loaded model go "
        "straight to a runtime, everything else to the router, which programs Envoy over xDS")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", help="public gRPC HOST:PORT (env MESHSERVE_GATEWAY_LISTEN; default 127.0.0.1:8033)")
    p.add_argument("--router", help="the router's gRPC HOST:PORT: xDS and fallback (default 127.0.0.1:8034)")
    p.add_argument("--admin-port", dest="admin_port", type=int,
                   help="Envoy's admin port, on 127.0.0.1 only (default 9901)")
    p.add_argument("--stats-listen", dest="stats_listen",
                   help="HOST:PORT serving only Envoy's /stats/prometheus and /ready (scraping, probes; default: none)")
    p.add_argument("--rest-listen", dest="rest_listen", help="public REST HOST:PORT (needs --router-rest)")
    p.add_argument("--router-rest", dest="router_rest", help="the router's REST HOST:PORT")
    p.add_argument("--concurrency", type=int, help="Envoy worker threads (default: one per core)")
    p.add_argument("--no-body-routing", dest="body_routing", action="store_const", const=False,
                   help="do not read model names from request bodies (such requests go through the router)")
    p.add_argument("--node-id", dest="node_id", help="Envoy node id (default: the host name)")
    p.add_argument("--envoy-log-level", dest="envoy_log_level", help="Envoy's log level (default warning)")
    p.add_argument("--tls-cert", dest="tls_cert", help="PEM certificate the gRPC and REST listeners serve TLS with "
                   "(re-read when the file is replaced)")
    p.add_argument("--tls-key", dest="tls_key", help="PEM key of --tls-cert")
    p.add_argument("--tls-client-ca", dest="tls_client_ca", help="clients must present a certificate this CA signed")
    p.add_argument("--router-ca", dest="router_ca", help="the router serves TLS: PEM CA of its certificate")
    p.add_argument("--client-cert", dest="client_cert", help="PEM client certificate towards a router that requires one")
    p.add_argument("--client-key", dest="client_key", help="PEM key of --client-cert")
    p.add_argument("--sds-dir", dest="sds_dir", help="where to write Envoy's SDS files (default: a temp folder)")
    p.add_argument("--print-bootstrap", action="store_true", help="print Envoy's bootstrap (JSON) and exit")


def run(args: argparse.Namespace) -> int:
    from mesh.errors import InvalidArgument
    from router.xds.bootstrap import bootstrap
    from router.xds.gateway import GatewaySettings, envoy_argv

    show = args.print_bootstrap
    del args.print_bootstrap
    settings = build_settings(GatewaySettings, args)
    if bool(settings.rest_listen) != bool(settings.router_rest):
        raise InvalidArgument("--rest-listen and --router-rest go together: give both or neither")
    if show:
        print(json.dumps(bootstrap(settings.config(settings.gateway_tls())), indent=2))
        return 0
    argv = envoy_argv(settings)
    print(f"gateway: Envoy on {settings.listen}{' (TLS)' if settings.tls_cert else ''} in front of router "
          f"{settings.router}{' (TLS)' if settings.router_ca else ''} "
          f"(admin 127.0.0.1:{settings.admin_port})", file=sys.stderr, flush=True)
    os.execv(argv[0], argv)
    return 0  # not reached
