"""Settings shared by every process, and the value parsers they use.

Each process has one pydantic-settings class (``RuntimeSettings``,
``RouterSettings``, ...) built once by its entry point from command-line flags
over ``MESHSERVE_*`` environment variables, then passed down. Nothing here reads
the environment at import time.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesh.errors import InvalidArgument

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20, "gi": 2**30, "gib": 2**30, "ti": 2**40, "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: Any) -> int:
    """Parses ``1048576``, ``"512Mi"``, ``"2G"``, ``"1.5GiB"`` into bytes."""
    if isinstance(value, bool):
        raise InvalidArgument(f"invalid size {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise InvalidArgument(f"invalid size {value}: must not be negative")
        return value
    m = _SIZE.match(str(value))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise InvalidArgument(
            f"invalid size {value!r}: use a number of bytes or a number with a unit "
            "(Ki, Mi, Gi, Ti, K, M, G, T), e.g. 512Mi"
        )
    return int(float(m.group(1)) * _UNITS[unit])


def _bytes_field(value: Any) -> int:
    try:
        return parse_bytes(value)
    except InvalidArgument as e:  # pydantic reports ValueErrors with the field name
        raise ValueError(str(e)) from None


def _bytes_or_none(value: Any) -> int | None:
    if value is None or value == "":
        return None
    return _bytes_field(value)


ByteSize = Annotated[int, BeforeValidator(_bytes_field)]
OptionalByteSize = Annotated[int | None, BeforeValidator(_bytes_or_none)]


def parse_host_port(value: str, *, what: str = "address") -> tuple[str, int]:
    """Splits ``host:port`` (``[v6]:port`` too), with a precise error."""
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InvalidArgument(f"invalid {what} {value!r}: expected HOST:PORT, e.g. 127.0.0.1:2379")
    return host.strip("[]"), int(port_text)


def check_host_port(value: str, what: str) -> str:
    """A pydantic validator body: ``value`` if it is HOST:PORT, else ValueError."""
    try:
        parse_host_port(value, what=what)
    except InvalidArgument as e:
        raise ValueError(str(e)) from None
    return value


_MESH_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")


class CommonSettings(BaseSettings):
    """What every meshserve process needs: where the registry is."""

    model_config = SettingsConfigDict(env_prefix="MESHSERVE_", extra="ignore", frozen=True)

    #: etcd endpoint, HOST:PORT.
    etcd: str = "127.0.0.1:2379"
    #: Mesh name; the registry lives under ``/meshserve/<mesh>/``.
    mesh: str = "default"
    #: Bound on every etcd call and on the initial connection, in seconds.
    etcd_timeout_s: float = 5.0
    #: Python log level.
    log_level: str = "INFO"
    #: TLS for this process's gRPC port: a PEM certificate (chain) and its key, re-read
    #: when they change (a rotated Secret needs no restart). "" = plaintext.
    tls_cert: str = ""
    tls_key: str = ""
    #: PEM CA bundle: with it, clients must present a certificate it signed (mTLS).
    tls_client_ca: str = ""
    #: Serve the metrics port with TLS too: the same certificate, key and client CA
    #: (re-read on change); off: plaintext metrics (a scraper inside the cluster).
    metrics_tls: bool = False
    #: HOST:PORT of a plaintext port serving only grpc.health.v1 (kubelet gRPC probes
    #: cannot speak TLS); "" = none.
    health_listen: str = ""
    #: etcd over TLS: the CA that signed etcd's certificate, and this process's client
    #: certificate and key (etcd's --client-cert-auth). All "" = plaintext etcd.
    etcd_ca: str = ""
    etcd_cert: str = ""
    etcd_key: str = ""

    @field_validator("etcd")
    @classmethod
    def _check_etcd(cls, v: str) -> str:
        return check_host_port(v, "etcd endpoint")

    @field_validator("mesh")
    @classmethod
    def _check_mesh(cls, v: str) -> str:
        if not _MESH_NAME.match(v):
            raise ValueError(
                f"invalid mesh name {v!r}: use 1-63 lowercase letters, digits, '.', '_' or '-'"
            )
        return v
