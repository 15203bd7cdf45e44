"""Which endpoint a URL path names, and the model in it.

Model ids may contain ``/``, ``:`` and ``@``. The path is split on its raw
(still percent-encoded) form and the model name is decoded afterwards, so
``/v2/models/team%2Firis%40v2/infer`` names ``team/iris@v2`` and a ``%2F``
never splits a name. Unencoded ``/`` and ``:`` work too where unambiguous:
everything between ``/models/`` and the endpoint's suffix (``:predict``,
``/infer``, ``/ready``, ``/versions/<v>``) is the name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from mesh.errors import InvalidArgument, NotFound, Unimplemented

_VERSIONED = re.compile(r"(.+)/versions/([^/]+)")

ENDPOINTS = ("GET /v1/models, GET /v1/models/<name>, POST /v1/models/<name>:predict, GET /v2, "
             "GET /v2/health/live, GET /v2/health/ready, GET /v2/models/<name>[/versions/<v>][/ready], "
             "POST /v2/models/<name>[/versions/<v>]/infer")


@dataclass(frozen=True, slots=True)
class Route:
    #: v1_list, v1_model, v1_predict, v2_server, v2_live, v2_ready, v2_metadata, v2_model_ready, v2_infer
    kind: str
    #: The HTTP method the endpoint takes.
    method: str
    model: str = ""
    version: str = ""


def _name(raw: str) -> str:
    try:
        name = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise InvalidArgument(f"model name {raw!r} in the URL is not valid percent-encoded UTF-8") from None
    if not name:
        raise InvalidArgument("the URL names no model: use /v2/models/<name>/... (percent-encode '/' as %2F)")
    return name


def route(raw_path: str) -> Route:
    """The endpoint ``raw_path`` (the request target as sent, query included) names."""
    path = raw_path.partition("?")[0].rstrip("/") or "/"
    if path.startswith("/v1/models"):
        rest = path[len("/v1/models"):]
        if not rest:
            return Route("v1_list", "GET")
        if rest[0] == "/":
            rest = rest[1:]
            if rest.endswith(":predict"):
                return Route("v1_predict", "POST", _name(rest[: -len(":predict")]))
            if rest.endswith(":explain"):
                raise Unimplemented("explain is not supported by meshserve; use :predict")
            return Route("v1_model", "GET", _name(rest))
    elif path == "/v2":
        return Route("v2_server", "GET")
    elif path == "/v2/health/live":
        return Route("v2_live", "GET")
    elif path == "/v2/health/ready":
        return Route("v2_ready", "GET")
    elif path.startswith("/v2/models/"):
        rest = path[len("/v2/models/"):]
        kind, method = "v2_metadata", "GET"
        if rest.endswith("/infer"):
            kind, method, rest = "v2_infer", "POST", rest[: -len("/infer")]
        elif rest.endswith("/ready"):
            kind, rest = "v2_model_ready", rest[: -len("/ready")]
        m = _VERSIONED.fullmatch(rest)
        if m:
            return Route(kind, method, _name(m.group(1)), _name(m.group(2)))
        return Route(kind, method, _name(rest))
    raise NotFound(f"no endpoint at {path!r}; meshserve serves {ENDPOINTS}")
