"""Who may call what: gates for the router's and the runtime's methods.

Router (``--auth-token-file``): every ``mmesh.ModelMesh`` and
``meshserve.v1.MeshAdmin`` call needs ``authorization: Bearer <token>``; the
KServe V2 service too with ``--auth-inference``. Health and reflection stay open
(probes, grpcurl's schema listing).

Runtime: ``mmesh.ModelRuntime`` (load, unload, sizes, status) only from routers:
a token from ``--spi-token-file``, or, under mTLS, a client certificate whose
common name or a subject alternative name is in ``--spi-client-names``. Either
suffices when both are set. Inference on the runtime stays open to whoever the
port's TLS lets in (Envoy sends hits there directly).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc

from mesh.errors import PermissionDenied, Unauthenticated
from mesh.security.guard import Gate, Gates, any_gate
from mesh.security.tokens import TokenFile, accepted, bearer

MANAGEMENT_SERVICES = ("/mmesh.ModelMesh/", "/meshserve.v1.MeshAdmin/")
INFERENCE_SERVICE = "/inference.GRPCInferenceService/"
SPI_SERVICE = "/mmesh.ModelRuntime/"


def token_gate(tokens: TokenFile, what: str = "this call") -> Gate:
    def gate(context: grpc.aio.ServicerContext) -> None:
        got = bearer(context.invocation_metadata() or ())
        if got is None:
            raise Unauthenticated(
                f"{what} needs a bearer token: send 'authorization: Bearer <token>' "
                "(meshserve --token or MESHSERVE_TOKEN)")
        if not got or not accepted(got, tokens.tokens()):
            raise Unauthenticated(f"{what}: the bearer token is not accepted (wrong, revoked or malformed)")

    return gate


def peer_names(context: grpc.aio.ServicerContext) -> set[str]:
    """Common name and subject alternative names of the client's verified certificate."""
    auth = context.auth_context() or {}
    names: set[str] = set()
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        for v in auth.get(key, ()):
            names.add(v.decode(errors="replace") if isinstance(v, bytes) else str(v))
    return names


def identity_gate(allowed: Sequence[str], what: str = "this call") -> Gate:
    wanted = frozenset(allowed)

    def gate(context: grpc.aio.ServicerContext) -> None:
        names = peer_names(context)
        if not names:
            raise Unauthenticated(f"{what} needs a client certificate naming a router")
        if not names & wanted:
            raise PermissionDenied(
                f"{what} is only for routers: the client certificate names {', '.join(sorted(names))}, "
                "which is not in this runtime's --spi-client-names")

    return gate


def router_gates(tokens: TokenFile | None, auth_inference: bool) -> Gates:
    if tokens is None:
        return lambda method: None
    management = token_gate(tokens, "management calls")
    inference = token_gate(tokens, "inference") if auth_inference else None

    def gates(method: str) -> Gate | None:
        if method.startswith(MANAGEMENT_SERVICES):
            return management
        if method.startswith(INFERENCE_SERVICE):
            return inference
        return None

    return gates


def runtime_gates(tokens: TokenFile | None, client_names: Sequence[str]) -> Gates:
    parts: list[Gate] = []
    what = "the ModelRuntime SPI"
    if tokens is not None:
        parts.append(token_gate(tokens, what))
    if client_names:
        parts.append(identity_gate(client_names, what))
    if not parts:
        return lambda method: None
    spi = any_gate(parts)
    return lambda method: spi if method.startswith(SPI_SERVICE) else None


def header_token_check(tokens: TokenFile, what: str = "inference") -> Callable[[str | None], None]:
    """The token check for an HTTP ``Authorization`` header (the REST front door)."""
    gate = token_gate(tokens, what)

    class _Headers:
        def __init__(self, value: str | None) -> None:
            self._md = [] if value is None else [("authorization", value)]

        def invocation_metadata(self) -> list[tuple[str, str]]:
            return self._md

    def check(value: str | None) -> None:
        gate(_Headers(value))  # type: ignore[arg-type]

    return check
