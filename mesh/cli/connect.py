"""How the client verbs reach a router: TLS, the bearer token, and what a failure means.

``--token`` / ``MESHSERVE_TOKEN`` goes on every call as ``authorization: Bearer``;
``--tls-ca`` (``MESHSERVE_TLS_CA``) switches to TLS, ``--tls-cert/--tls-key``
(``MESHSERVE_CLIENT_CERT`` / ``MESHSERVE_CLIENT_KEY``) add a client certificate.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import grpc

from mesh.errors import MeshError
from mesh.grpc_errors import from_rpc_error
from mesh.security.tls import channel_tls, sync_channel

#: How long to see whether the router can be connected to at all, after an UNAVAILABLE.
PROBE_S = 2.0


def add_connection_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--router", help="router HOST:PORT (env MESHSERVE_ROUTER; default 127.0.0.1:8033)")
    p.add_argument("--token", help="bearer token for routers started with --auth-token-file (env MESHSERVE_TOKEN)")
    p.add_argument("--tls-ca", dest="tls_ca", help="PEM CA of the router's certificate: connect with TLS "
                   "(env MESHSERVE_TLS_CA)")
    p.add_argument("--tls-cert", dest="client_cert", help="PEM client certificate, for routers that require one "
                   "(env MESHSERVE_CLIENT_CERT)")
    p.add_argument("--tls-key", dest="client_key", help="PEM key of --tls-cert (env MESHSERVE_CLIENT_KEY)")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ("router", "token", "tls_ca", "client_cert", "client_key")
    return {n: getattr(args, n) for n in names if getattr(args, n, None)}


class _Token(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._md = ("authorization", f"Bearer {token}")

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        details = details._replace(metadata=[*(details.metadata or ()), self._md])
        return continuation(details, request)




def router_channel(settings: Any, options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
    """A channel to ``settings.router`` with its TLS and token settings."""
    tls = channel_tls(settings.tls_ca, settings.client_cert, settings.client_key)
    channel = sync_channel(settings.router, tls, options)
    if settings.token:
        return grpc.intercept_channel(channel, _Token(settings.token))
    return channel


def reachable(channel: grpc.Channel, timeout_s: float = PROBE_S) -> bool:
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
        return True
    except grpc.FutureTimeoutError:
        return False


def report(e: grpc.RpcError, channel: grpc.Channel, settings: Any, command: str) -> int:
    """Prints a failed call; "cannot reach" only when no connection to the router can be made."""
    code = e.code()  # type: ignore[attr-defined]
    if code == grpc.StatusCode.UNAVAILABLE and not reachable(channel):
        raise MeshError(f"cannot reach the router at {settings.router} ({e.details()}); "  # type: ignore[attr-defined]
                        "start one (meshserve up) or set --router / MESHSERVE_ROUTER"
                        + ("" if settings.tls_ca else "; a TLS router needs --tls-ca")) from None
    print(f"meshserve {command}: {code.name}: {from_rpc_error(e)}", file=sys.stderr)
    return 1
