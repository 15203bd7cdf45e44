"""What ``meshserve up`` sets up for security: ``--tls``, tokens, the mesh token.

- Always: a random mesh token in ``<data-dir>/mesh-token`` (0600) that the router
  presents on SPI calls and the runtimes require, so only the router drives them.
- ``--tls``: a local CA and certificates under ``<data-dir>/pki`` (reused when
  present); the router serves TLS, runtimes serve mTLS and take SPI calls only
  from the router's certificate, and a local etcd serves TLS with client
  certificates. Clients connect with ``--tls-ca <data-dir>/pki/ca.pem``.
- ``--tls-cert/--tls-key/--tls-client-ca``: the router's own certificate instead.
- ``--auth-token-file`` / ``--auth-inference``: the router's token check.
"""

from __future__ import annotations

import argparse
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.errors import InvalidArgument


@dataclass
class LocalSecurity:
    router_options: dict[str, Any] = field(default_factory=dict)
    runtime_args: list[str] = field(default_factory=list)
    etcd_tls: tuple[str, str, str] | None = None
    #: The generated CA clients verify the router with ("" = none generated).
    client_ca: str = ""
    #: The router serves TLS (generated or the user's certificate).
    tls_router: bool = False
    #: With Envoy in front (``--tls``): its ``meshserve gateway`` TLS flags, and the router
    #: settings that replace ``router_options``' for the router behind it. Empty: Envoy
    #: cannot front this TLS setup (the user's own certificate without ``--tls``).
    gateway_args: list[str] = field(default_factory=list)
    behind_envoy: dict[str, Any] = field(default_factory=dict)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls", action="store_true",
                   help="generate a local CA and certificates in the data dir and use TLS everywhere "
                        "(router TLS, runtime mTLS, etcd TLS); clients pass --tls-ca <data-dir>/pki/ca.pem")
    p.add_argument("--tls-cert", help="router's PEM certificate (env MESHSERVE_TLS_CERT); with --tls: instead of "
                   "the generated one")
    p.add_argument("--tls-key", help="PEM key of --tls-cert (env MESHSERVE_TLS_KEY)")
    p.add_argument("--tls-client-ca", help="router requires client certificates this CA signed "
                   "(env MESHSERVE_TLS_CLIENT_CA)")
    p.add_argument("--auth-token-file", help="bearer tokens (one a line, re-read on change) that management calls "
                   "need (env MESHSERVE_AUTH_TOKEN_FILE)")
    p.add_argument("--auth-inference", action="store_true", help="with --auth-token-file: inference needs a token too")
    p.add_argument("--model-roots", help="comma-separated folders runtimes may load local model paths from "
                   "(default: the data dir, the current folder and the system temp folder)")


def _env(args: argparse.Namespace, name: str) -> str:
    value = getattr(args, name, None)
    return str(value) if value else os.environ.get(f"MESHSERVE_{name.upper()}", "")


def mesh_token(data_dir: Path) -> Path:
    path = data_dir / "mesh-token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    return path


def local_security(args: argparse.Namespace, data_dir: Path, local_etcd: bool) -> LocalSecurity:
    out = LocalSecurity()
    token = str(mesh_token(data_dir))
    out.runtime_args += ["--spi-token-file", token]
    out.router_options["runtime_token_file"] = token
    cert, key, client_ca = _env(args, "tls_cert"), _env(args, "tls_key"), _env(args, "tls_client_ca")
    if bool(cert) != bool(key):
        raise InvalidArgument("--tls-cert and --tls-key go together")
    if args.tls:
        from mesh.security.certs import ROUTER_NAME, issue, local_pki

        pki = local_pki(data_dir / "pki")
        ca = str(pki.ca.cert)
        out.client_ca = "" if cert else ca  # the user's own router certificate has its own CA
        cert, key = cert or str(pki.router.cert), key or str(pki.router.key)
        rt = pki.runtime
        out.runtime_args += ["--tls-cert", str(rt.cert), "--tls-key", str(rt.key), "--tls-client-ca", ca,
                             "--spi-client-names", ROUTER_NAME]
        out.router_options.update(runtime_ca=ca, runtime_cert=str(pki.router.cert), runtime_key=str(pki.router.key))
        # Behind Envoy the router keeps the local CA's certificate (Envoy verifies it with that
        # CA); Envoy serves the front door's certificate and presents its own to the router.
        gw = issue(pki.ca, pki.ca.cert.parent, "meshserve-gateway")
        out.gateway_args = ["--tls-cert", cert, "--tls-key", key, "--router-ca", ca, "--client-cert", str(gw.cert),
                            "--client-key", str(gw.key), "--sds-dir", str(data_dir / "gateway-sds")]
        if client_ca:
            out.gateway_args += ["--tls-client-ca", client_ca]
        out.behind_envoy = {"tls_cert": str(pki.router.cert), "tls_key": str(pki.router.key),
                            "tls_client_ca": ca if client_ca else "", "xds_sds_dir": str(data_dir / "xds-sds")}
        if local_etcd:
            etcd = issue(pki.ca, pki.ca.cert.parent, "meshserve-etcd")
            out.etcd_tls = (str(etcd.cert), str(etcd.key), ca)
            out.runtime_args += ["--etcd-ca", ca, "--etcd-cert", str(rt.cert), "--etcd-key", str(rt.key)]
            out.router_options.update(etcd_ca=ca, etcd_cert=str(pki.router.cert), etcd_key=str(pki.router.key))
    if cert:
        out.router_options.update(tls_cert=cert, tls_key=key)
        out.tls_router = True
    if client_ca:
        out.router_options["tls_client_ca"] = client_ca
    tokens = _env(args, "auth_token_file")
    if tokens:
        out.router_options["auth_token_file"] = tokens
        out.router_options["auth_inference"] = bool(args.auth_inference)
    elif args.auth_inference:
        raise InvalidArgument("--auth-inference needs --auth-token-file")
    return out
