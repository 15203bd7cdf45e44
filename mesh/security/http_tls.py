"""TLS for the HTTP ports (REST, metrics): a stdlib ``ssl.SSLContext`` re-read on change.

The context handed to the server has an ``sni_callback``; Python calls it on every
TLS handshake (also when the client sends no server name), before the certificate
is chosen. It stats the certificate, key and client CA files (one ``stat`` each)
and, when one changed, builds a new context from them and switches the handshake
to it, so a rotated Secret is served from the next connection on, without a
restart. A half-written rotation (key and certificate not matching yet, a file
missing) keeps the previous context and logs. Whether a client certificate is
required is fixed at start (``--tls-client-ca`` given or not); the CA bundle it
is checked against follows the file.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from typing import Any

from mesh.errors import InvalidArgument
from mesh.security.tls import ServerTls, _stamp

log = logging.getLogger(__name__)


def _build(tls: ServerTls, alpn: tuple[str, ...]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(tls.cert, tls.key)
        if tls.client_ca:
            ctx.load_verify_locations(cafile=tls.client_ca)
    except (OSError, ssl.SSLError) as e:
        raise InvalidArgument(f"cannot use the TLS files {tls.cert} / {tls.key}"
                              f"{' / ' + tls.client_ca if tls.client_ca else ''}: {e}") from None
    if tls.client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def server_ssl_context(tls: ServerTls, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    """A server context for ``tls`` whose certificate (and client CA) follow the files."""
    paths = tuple(p for p in (tls.cert, tls.key, tls.client_ca) if p)
    base = _build(tls, alpn)
    lock = threading.Lock()
    state: dict[str, Any] = {"stamp": _stamp(paths), "ctx": base}

    def pick(conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, ctx: ssl.SSLContext) -> None:
        with lock:  # the metrics server handshakes on several threads
            stamp = _stamp(paths)
            if stamp != state["stamp"]:
                try:
                    state["ctx"] = _build(tls, alpn)
                    state["stamp"] = stamp
                    log.info("TLS certificate re-read from %s", tls.cert)
                except InvalidArgument as e:
                    log.warning("TLS files changed but cannot be used yet (%s); keeping the previous ones", e)
            current = state["ctx"]
        if current is not ctx:
            conn.context = current

    base.sni_callback = pick
    return base


#: A client that connects and never finishes its handshake holds one thread this long.
HANDSHAKE_TIMEOUT_S = 10.0


def wrap_accepted(sock: socket.socket, ctx: ssl.SSLContext) -> ssl.SSLSocket | None:
    """The server side of a TLS handshake on an accepted socket (None: it failed, socket closed)."""
    sock.settimeout(HANDSHAKE_TIMEOUT_S)
    try:
        tls = ctx.wrap_socket(sock, server_side=True)
    except (OSError, ssl.SSLError) as e:
        log.debug("TLS handshake failed: %s", e)
        sock.close()
        return None
    tls.settimeout(None)
    return tls


def metrics_ssl_context(tls: ServerTls | None, enabled: bool) -> ssl.SSLContext | None:
    """The metrics port's TLS (``metrics_tls``): the process's own certificate."""
    if not enabled:
        return None
    if tls is None:
        raise InvalidArgument("--metrics-tls needs --tls-cert and --tls-key")
    return server_ssl_context(tls)
