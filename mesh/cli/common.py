"""Helpers shared by the subcommands: settings from flags, logging, run loop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from mesh.errors import InvalidArgument

S = TypeVar("S")


def add_registry_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--etcd", help="etcd endpoint HOST:PORT (env MESHSERVE_ETCD; default 127.0.0.1:2379)")
    p.add_argument("--mesh", help="mesh name; keys live under /meshserve/<mesh>/ (env MESHSERVE_MESH)")


def add_tls_arguments(p: argparse.ArgumentParser) -> None:
    """Server TLS of this process's gRPC port, and etcd client TLS (files re-read on change)."""
    p.add_argument("--tls-cert", help="PEM certificate (chain) to serve TLS with (env MESHSERVE_TLS_CERT)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert (env MESHSERVE_TLS_KEY)")
    p.add_argument("--tls-client-ca", help="PEM CA bundle; clients must present a certificate it signed "
                   "(mTLS; env MESHSERVE_TLS_CLIENT_CA)")
    p.add_argument("--metrics-tls", action="store_const", const=True,
                   help="serve the metrics port with TLS too, with --tls-cert/--tls-key/--tls-client-ca "
                   "(env MESHSERVE_METRICS_TLS)")
    p.add_argument("--health-listen", help="HOST:PORT of a plaintext port serving only gRPC health, for kubelet "
                   "probes of a TLS port (env MESHSERVE_HEALTH_LISTEN)")
    p.add_argument("--etcd-ca", help="PEM CA of etcd's certificate: talk TLS to etcd (env MESHSERVE_ETCD_CA)")
    p.add_argument("--etcd-cert", help="PEM client certificate for etcd (env MESHSERVE_ETCD_CERT)")
    p.add_argument("--etcd-key", help="PEM key of --etcd-cert (env MESHSERVE_ETCD_KEY)")


def build_settings(cls: Callable[..., S], args: argparse.Namespace, **extra: Any) -> S:
    """Flags given on the command line win over ``MESHSERVE_*`` variables."""
    values = {k: v for k, v in vars(args).items() if v is not None and not k.startswith("_") and k != "command"}
    values.update(extra)
    try:
        return cls(**values)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in e.errors()
        )
        raise InvalidArgument(f"invalid settings: {problems}") from None


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Runs ``main(stop_event)``; SIGINT/SIGTERM set the event for a clean stop."""

    async def runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await main(stop)

    return asyncio.run(runner())


def read_file_arg(path: str | None) -> str:
    """A FILE argument's text; '-' or None reads stdin."""
    if path in (None, "-"):
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise InvalidArgument(f"cannot read {path}: {e.strerror}") from None
