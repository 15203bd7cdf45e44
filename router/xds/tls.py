"""Envoy's TLS: secrets from PEM files over file-based SDS, so a rotation needs no restart.

Envoy re-reads certificates only when they come over SDS (secret discovery).
Each secret here is a small SDS file (a DiscoveryResponse in JSON) that names
the PEM files; Envoy watches the folder holding them and reloads the pair when a
file is moved into it (a mounted Kubernetes Secret swaps its ``..data`` link; a
rotation written elsewhere and renamed into place counts too). Files edited in
place are not noticed.

The gateway writes the secrets for its listeners and its router clusters
(``gateway_files``); the router writes the one the runtime clusters it sends
over xDS use (``write_runtime_secrets``): its own client certificate and the
runtimes' CA, so runtimes see Envoy as they see the router. Both need Envoy to
see the files at the same paths (the same pod or host, as deploy/ and
``meshserve up`` run them).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
DOWNSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
TLS_SOCKET = "envoy.transport_sockets.tls"


def _abs(path: str) -> str:
    return os.path.abspath(path)


def cert_secret(name: str, cert: str, key: str) -> dict[str, Any]:
    return {"@type": SECRET_TYPE, "name": name, "tls_certificate": {
        "certificate_chain": {"filename": _abs(cert)}, "private_key": {"filename": _abs(key)},
        "watched_directory": {"path": os.path.dirname(_abs(cert))}}}


def ca_secret(name: str, ca: str) -> dict[str, Any]:
    return {"@type": SECRET_TYPE, "name": name, "validation_context": {
        "trusted_ca": {"filename": _abs(ca)}, "watched_directory": {"path": os.path.dirname(_abs(ca))}}}


def sds_ref(name: str, folder: str) -> dict[str, Any]:
    """An SdsSecretConfig naming the secret ``name`` in ``<folder>/<name>.json``."""
    return {"name": name, "sds_config": {"path_config_source": {"path": os.path.join(_abs(folder), f"{name}.json")},
                                         "resource_api_version": "V3"}}


def write_secrets(folder: Path, secrets: list[dict[str, Any]]) -> None:
    """One SDS file per secret, each replaced atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in secrets:
        path = folder / f"{s['name']}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"version_info": "1", "resources": [s]}))
        os.replace(tmp, path)


def _common(cert: dict[str, Any] | None, ca: dict[str, Any] | None, alpn: list[str]) -> dict[str, Any]:
    common: dict[str, Any] = {"alpn_protocols": alpn}
    if cert is not None:
        common["tls_certificate_sds_secret_configs"] = [cert]
    if ca is not None:
        common["validation_context_sds_secret_config"] = ca
    return common


def downstream_socket(cert: dict[str, Any], client_ca: dict[str, Any] | None) -> dict[str, Any]:
    """A listener's TLS; with ``client_ca``, clients must present a certificate it signed."""
    return {"name": TLS_SOCKET, "typed_config": {
        "@type": DOWNSTREAM, "require_client_certificate": client_ca is not None,
        # h2 for gRPC clients (they require ALPN), http/1.1 for REST clients.
        "common_tls_context": _common(cert, client_ca, ["h2", "http/1.1"])}}


def upstream_socket(ca: dict[str, Any] | None, cert: dict[str, Any] | None, alpn: list[str]) -> dict[str, Any]:
    """TLS towards an upstream: its certificate chain checked against ``ca``; ``cert``: ours."""
    return {"name": TLS_SOCKET, "typed_config": {"@type": UPSTREAM, "common_tls_context": _common(cert, ca, alpn)}}


@dataclass(frozen=True, slots=True)
class GatewayTls:
    """The gateway's TLS settings (all paths as Envoy sees them)."""

    #: Listener certificate and key (gRPC and REST); "" = plaintext listeners.
    cert: str = ""
    key: str = ""
    #: Clients must present a certificate this CA signed; "" = no client certificates.
    client_ca: str = ""
    #: The router serves TLS: its CA, and this gateway's client certificate (a router with a client CA).
    router_ca: str = ""
    client_cert: str = ""
    client_key: str = ""
    #: Where the SDS files go.
    sds_dir: str = ""

    def secrets(self) -> list[dict[str, Any]]:
        out = []
        if self.cert:
            out.append(cert_secret("listener_cert", self.cert, self.key))
        if self.client_ca:
            out.append(ca_secret("listener_client_ca", self.client_ca))
        if self.router_ca:
            out.append(ca_secret("router_ca", self.router_ca))
        if self.client_cert:
            out.append(cert_secret("router_client_cert", self.client_cert, self.client_key))
        return out

    def listener_socket(self) -> dict[str, Any] | None:
        if not self.cert:
            return None
        ca = sds_ref("listener_client_ca", self.sds_dir) if self.client_ca else None
        return downstream_socket(sds_ref("listener_cert", self.sds_dir), ca)

    def router_socket(self, alpn: list[str]) -> dict[str, Any] | None:
        if not (self.router_ca or self.client_cert):
            return None
        return upstream_socket(sds_ref("router_ca", self.sds_dir) if self.router_ca else None,
                               sds_ref("router_client_cert", self.sds_dir) if self.client_cert else None, alpn)


def runtime_secrets(ca: str, cert: str, key: str) -> list[dict[str, Any]]:
    """What the runtime clusters' TLS names: the runtimes' CA and the router's client certificate."""
    out = [ca_secret("runtime_ca", ca)]
    if cert:
        out.append(cert_secret("runtime_client_cert", cert, key))
    return out


def runtime_socket(folder: str, client_cert: bool) -> Any:
    """The runtime clusters' transport socket (a protobuf, for router/xds/snapshot.py)."""
    from envoy.config.core.v3 import base_pb2
    from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
    from google.protobuf import any_pb2, json_format

    ctx = tls_pb2.UpstreamTlsContext()
    json_format.ParseDict({"common_tls_context": _common(
        sds_ref("runtime_client_cert", folder) if client_cert else None, sds_ref("runtime_ca", folder), ["h2"])}, ctx)
    packed = any_pb2.Any()
    packed.Pack(ctx)
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=packed)
