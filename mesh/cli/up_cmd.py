"""`meshserve up`: a local mesh in the foreground (etcd, runtimes, router)."""

from __future__ import annotations

import argparse
import asyncio

from mesh.cli.common import run_until_signal, setup_logging
from mesh.settings import parse_bytes, parse_host_port

HELP = "start a local mesh in the foreground: etcd (unless --etcd), N runtimes and a router"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtimes", type=int, default=2, help="runtime processes to start (default 2)")
    p.add_argument("--listen", default="127.0.0.1:8033", help="router HOST:PORT (default 127.0.0.1:8033)")
    p.add_argument("--rest-listen", default="127.0.0.1:8008",
                   help="router KServe V1/V2 REST HOST:PORT (default 127.0.0.1:8008; '' turns it off)")
    p.add_argument("--etcd", help="use this etcd HOST:PORT instead of starting a local one")
    p.add_argument("--mesh", default="default", help="mesh name (default 'default')")
    p.add_argument("--capacity", help="memory per runtime, e.g. 512Mi (default: derived from the host)")
    p.add_argument("--data-dir", help="where etcd data, model caches and logs go (default: a temp dir)")
    p.add_argument("--metrics-listen", help="router metrics HOST:PORT (runtimes get free ports)")
    p.add_argument("--demo", action="store_true",
                   help="register generated models, send inference, show placements and an eviction, then exit")
    p.add_argument("--log-level", default="WARNING", help="log level of this process (default WARNING)")
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

    async def main(stop: asyncio.Event) -> int:
        local = LocalMesh(runtimes=args.runtimes, listen=args.listen, etcd=args.etcd, capacity=args.capacity,
                          data_dir=args.data_dir, mesh=args.mesh, metrics_listen=args.metrics_listen,
                          rest_listen=args.rest_listen,
                          runtime_args=("--allow-pickle",) if args.allow_pickle else ())
        try:
            await local.start()
            print(f"meshserve up: router on {local.endpoint}, {len(local.procs)} runtime(s), "
                  f"etcd {local.etcd}, data in {local.data_dir}", flush=True)
            if local.rest_endpoint:
                print(f"  REST (KServe V1/V2) on http://{local.rest_endpoint}", flush=True)
            for p in local.procs:
                print(f"  runtime {p.instance_id} on {p.endpoint} (metrics {p.metrics_endpoint}, log {p.log_path})",
                      flush=True)
            if args.demo:
                from mesh.cli.demo import run_demo

                return await run_demo(local)
            print(f"ready: try  meshserve cluster --router {local.endpoint}   (Ctrl-C stops)", flush=True)
            await stop.wait()
            return 0
        finally:
            await local.stop()

    return run_until_signal(main)
