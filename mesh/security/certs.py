"""A local certificate authority and certificates (``meshserve up --tls``, tests).

Everything is PEM under one folder: ``ca.pem`` / ``ca-key.pem`` and, per name,
``<name>.pem`` / ``<name>-key.pem`` (keys mode 0600). Keys are ECDSA P-256; leaf
certificates name ``localhost``, ``127.0.0.1``, ``::1`` and the host name, and
serve both as server and as client certificates (their common name is the
identity a runtime's ``--spi-client-names`` matches). An existing CA is reused,
so re-running ``up --tls`` keeps clients' trust.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshserve"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def ensure_ca(folder: Path, days: int = 3650) -> CertPair:
    """The CA in ``folder`` (created if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    pair = CertPair(folder / "ca.pem", folder / "ca-key.pem")
    if pair.cert.exists() and pair.key.exists():
        return pair
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name("meshserve local CA")).issuer_name(_name("meshserve local CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write_key(pair.key, key)
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return pair


def issue(ca: CertPair, folder: Path, name: str, *, hosts: tuple[str, ...] = (), days: int = 825) -> CertPair:
    """A leaf certificate with common name ``name`` for ``hosts`` (plus the local names), signed by ``ca``."""
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in (*hosts, "localhost", socket.gethostname(), "127.0.0.1", "::1"):
        try:
            entry: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(h))
        except ValueError:
            entry = x509.DNSName(h)
        if entry not in sans:
            sans.append(entry)
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    pair = CertPair(folder / f"{name}.pem", folder / f"{name}-key.pem")
    # Key first, then certificate: a watcher that sees the new certificate finds its key.
    _write_key(pair.key, key)
    tmp = pair.cert.with_suffix(".pem.tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, pair.cert)
    return pair


@dataclass(frozen=True)
class LocalPki:
    ca: CertPair
    router: CertPair
    runtime: CertPair
    client: CertPair


ROUTER_NAME = "meshserve-router"


def local_pki(folder: Path) -> LocalPki:
    """The CA and the router, runtime and client certificates ``meshserve up --tls`` uses."""
    ca = ensure_ca(folder)
    return LocalPki(ca, issue(ca, folder, ROUTER_NAME), issue(ca, folder, "meshserve-runtime"),
                    issue(ca, folder, "meshserve-client"))
