"""gRPC credentials from PEM files.

Servers: ``server_credentials`` uses grpc's dynamic SSL credentials. grpc calls the
fetcher on every new connection's handshake; it stats the three files and hands
grpc a new certificate configuration only when one changed (a rotated Secret),
so a rotation needs no restart and costs one ``stat`` per file per connection.
A half-written rotation (key and certificate not matching yet, unreadable file)
keeps the previous configuration and logs.

Clients: ``ChannelTls.credentials()`` re-reads its files when they change, so a
channel opened after a rotation uses the new certificate (channels already open
keep theirs until they are re-created).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from mesh.errors import InvalidArgument

log = logging.getLogger(__name__)


def _read(path: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InvalidArgument(f"cannot read the {what} {path}: {e.strerror or e}") from None
    if b"-----BEGIN" not in data:
        raise InvalidArgument(f"the {what} {path} is not PEM (no -----BEGIN line)")
    return data


def _stamp(paths: tuple[str, ...]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((0, 0, 0))
    return tuple(out)


def _check_match(cert_pem: bytes, key_pem: bytes, cert_path: str) -> None:
    """InvalidArgument unless the key belongs to the (first) certificate: a rotation
    caught between writing the key and the certificate is not used yet."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert_pub = x509.load_pem_x509_certificate(cert_pem).public_key()
        key_pub = serialization.load_pem_private_key(key_pem, password=None).public_key()
    except (ValueError, TypeError) as e:
        raise InvalidArgument(f"the TLS certificate {cert_path} or its key does not parse: {e}") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert_pub.public_bytes(*spki) != key_pub.public_bytes(*spki):
        raise InvalidArgument(f"the TLS key does not belong to the certificate {cert_path}")


def check_pair(cert: str, key: str, what: str) -> None:
    """InvalidArgument unless both files are set, or neither."""
    if bool(cert) != bool(key):
        raise InvalidArgument(f"{what}: give both the certificate and its key, or neither")


@dataclass
class ServerTls:
    cert: str
    key: str
    client_ca: str = ""

    def _config(self) -> grpc.ServerCertificateConfiguration:
        pair = (_read(self.key, "TLS key"), _read(self.cert, "TLS certificate"))
        _check_match(pair[1], pair[0], self.cert)
        ca = _read(self.client_ca, "TLS client CA") if self.client_ca else None
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)

    def credentials(self) -> grpc.ServerCredentials:
        paths = tuple(p for p in (self.cert, self.key, self.client_ca) if p)
        lock = threading.Lock()
        state = {"stamp": _stamp(paths)}
        initial = self._config()

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            # Called by grpc's core on each handshake, possibly from several threads.
            with lock:
                stamp = _stamp(paths)
                if stamp == state["stamp"]:
                    return None
                try:
                    config = self._config()
                except InvalidArgument as e:
                    log.warning("TLS files changed but cannot be used yet (%s); keeping the previous ones", e)
                    return None
                state["stamp"] = stamp
                log.info("TLS certificate re-read from %s", self.cert)
                return config

        return grpc.dynamic_ssl_server_credentials(initial, fetch,
                                                   require_client_authentication=bool(self.client_ca))


def server_tls(cert: str, key: str, client_ca: str, what: str = "--tls-cert/--tls-key") -> ServerTls | None:
    """The server's TLS setup from its settings; None for plaintext."""
    check_pair(cert, key, what)
    if not cert:
        if client_ca:
            raise InvalidArgument("--tls-client-ca needs --tls-cert and --tls-key (client certificates need TLS)")
        return None
    tls = ServerTls(cert, key, client_ca)
    tls._config()  # fail at start, with the file named, not at the first handshake
    return tls


def add_port(server: grpc.aio.Server, listen: str, tls: ServerTls | None) -> int:
    """Binds ``listen`` plaintext or with TLS; returns the port (0 when binding failed)."""
    if tls is None:
        return server.add_insecure_port(listen)
    return server.add_secure_port(listen, tls.credentials())


@dataclass
class ChannelTls:
    """A client's trust roots (``ca``: "" = the system's) and optional certificate."""

    ca: str = ""
    cert: str = ""
    key: str = ""

    def __post_init__(self) -> None:
        check_pair(self.cert, self.key, "client certificate")
        self._lock = threading.Lock()
        self._stamp: tuple[tuple[int, int, int], ...] | None = None
        self._creds: grpc.ChannelCredentials | None = None

    def _paths(self) -> tuple[str, ...]:
        return tuple(p for p in (self.ca, self.cert, self.key) if p)

    def pem(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """(root CA, client key, client certificate), each None where not set."""
        return (_read(self.ca, "CA certificate") if self.ca else None,
                _read(self.key, "client key") if self.key else None,
                _read(self.cert, "client certificate") if self.cert else None)

    def credentials(self) -> grpc.ChannelCredentials:
        with self._lock:
            stamp = _stamp(self._paths())
            if self._creds is None or stamp != self._stamp:
                ca, key, cert = self.pem()
                self._creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                                           certificate_chain=cert)
                self._stamp = stamp
            return self._creds


def channel_tls(ca: str, cert: str, key: str) -> ChannelTls | None:
    """None (plaintext) when nothing is set; TLS as soon as a CA or a certificate is."""
    if not (ca or cert or key):
        return None
    tls = ChannelTls(ca, cert, key)
    tls.pem()
    return tls


def aio_channel(target: str, tls: ChannelTls | None, options: Sequence[tuple[str, Any]] | None = None) -> grpc.aio.Channel:
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, tls.credentials(), options=options)


def sync_channel(target: str, tls: ChannelTls | None, options: Sequence[tuple[str, Any]] | None = None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, tls.credentials(), options=options)
