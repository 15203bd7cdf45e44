"""The gateway's Envoy bootstrap: a pure function from its settings to Envoy's config (JSON).

Static: the public gRPC listener (routes over RDS from the router), the router
cluster (fallback for everything not routed straight) and the xDS cluster (the
router too), the admin interface on 127.0.0.1 only, and optionally a stats
listener serving only ``/stats/prometheus`` and ``/ready`` (so Prometheus and
the kubelet reach them without the admin port leaving loopback) and a REST listener in front of the router's
REST port. Dynamic over ADS: clusters and routes (router/xds/snapshot.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from router.xds.tls import GatewayTls
from router.xds.snapshot import (BODY_HEADER, MAX_REQUEST_BYTES, MODEL_HEADER, ROUTE_CONFIG_NAME, ROUTER_CLUSTER,
                                 VMODEL_HEADER)

XDS_CLUSTER = "xds"
ADMIN_CLUSTER = "envoy_admin"
REST_CLUSTER = "router_rest"

# Reads the model name from field 1 of ModelInfer / ModelMetadata (tritonclient's
# default: no header) into mm-model-id and mm-body-model (the marker that says the id
# came from the body: a vmodel first) so the route can be chosen in Envoy. Only the first bytes
# are read: 5 bytes of gRPC framing, the tag 0x0a, a varint length, the name.
# A compressed message, or field 1 not first, is left to the router.
BODY_FILTER = r"""
local PATHS = {
  ["/inference.GRPCInferenceService/ModelInfer"] = true,
  ["/inference.GRPCInferenceService/ModelMetadata"] = true,
}
local HEADER = "%s"
function envoy_on_request(h)
  local headers = h:headers()
  headers:remove(HEADER)
  if not PATHS[headers:get(":path")] then return end
  if headers:get("mm-model-id") or headers:get("mm-vmodel-id")
     or headers:get("mm-model-id-bin") or headers:get("mm-vmodel-id-bin") then return end
  local body = h:body()
  if body == nil then return end
  local n = body:length()
  if n < 8 then return end
  local head = body:getBytes(0, math.min(n, 300))
  if head:byte(1) ~= 0 or head:byte(6) ~= 10 then return end
  local len, mul, i = 0, 1, 7
  while true do
    local b = head:byte(i)
    if b == nil or mul > 2097152 then return end
    i = i + 1
    if b < 128 then len = len + b * mul break end
    len = len + (b - 128) * mul
    mul = mul * 128
  end
  if len == 0 or len > 256 or i + len - 1 > #head then return end
  local name = head:sub(i, i + len - 1)
  if not name:find("^[%%w%%._:@%%+=/%%-]+$") then return end
  -- (the headers object from before body() is out of scope)
  local after = h:headers()
  after:add(HEADER, name)
  after:add("mm-model-id", name)
  h:clearRouteCache()
end
""" % BODY_HEADER


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    #: Public gRPC HOST:PORT.
    listen: str
    #: The router's gRPC HOST:PORT (xDS and the fallback for misses and management).
    router: str
    admin_port: int
    node_id: str = "meshserve-gateway"
    #: HOST:PORT serving only /stats/prometheus; "" = none.
    stats_listen: str = ""
    #: Public REST HOST:PORT and the router's REST HOST:PORT; "" = none.
    rest_listen: str = ""
    router_rest: str = ""
    #: Read the model name from request bodies (Lua) when no header names it.
    body_routing: bool = True
    #: TLS of the public listeners and towards the router (router/xds/tls.py); default: none.
    tls: GatewayTls = GatewayTls()


def _split(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def _addr(hostport: str) -> dict[str, Any]:
    host, port = _split(hostport)
    return {"socket_address": {"address": host, "port_value": port}}


def _cluster(name: str, hostport: str, *, http2: bool = True, tls: dict[str, Any] | None = None) -> dict[str, Any]:
    host, _ = _split(hostport)
    ip = bool(re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]+", host))
    c: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if ip else "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name,
                            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(hostport)}}]}]},
        "circuit_breakers": {"thresholds": [{"max_connections": 1000000, "max_pending_requests": 1000000,
                                             "max_requests": 1000000, "max_retries": 1000000}]},
    }
    if tls is not None:
        c["transport_socket"] = tls
    if http2:
        c["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {"max_concurrent_streams": 10000}}}}
    return c


def _header_present(name: str) -> dict[str, Any]:
    return {"single_predicate": {
        "input": {"name": name, "typed_config": {
            "@type": "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput", "header_name": name}},
        "value_match": {"safe_regex": {"google_re2": {}, "regex": ".+"}}}}


def _body_filter() -> dict[str, Any]:
    """The Lua body filter, skipped (no Lua call at all) when a header already names the model.

    Most of what a saturated Envoy spends per request is fixed; the Lua call is ~10-15 % of
    it (BENCHMARKS.md, gateway-tuning). A client's own ``mm-body-model`` still goes through
    the filter, which removes it."""
    lua = {"name": "envoy.filters.http.lua", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": BODY_FILTER}}}
    named = {"or_matcher": {"predicate": [_header_present(MODEL_HEADER), _header_present(VMODEL_HEADER)]}}
    skip_when = {"and_matcher": {"predicate": [named, {"not_matcher": _header_present(BODY_HEADER)}]}}
    return {"name": "body_model_unless_header", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher",
        "extension_config": lua,
        "xds_matcher": {"matcher_list": {"matchers": [{"predicate": skip_when, "on_match": {"action": {
            "name": "skip",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter"},
        }}}]}}}}


#: The stats kept: what the ServiceMonitor, the dashboard, the HPA rule and the tests read,
#: plus what explains a failed request. Envoy makes ~100 stats per cluster and counts bytes
#: per read and write; the rest become null stats (no per-request work).
KEPT_STATS = [
    {"prefix": "server."}, {"prefix": "cluster_manager."}, {"prefix": "listener_manager."},
    {"prefix": "control_plane."}, {"prefix": "runtime."},
    {"safe_regex": {"regex": r"^http\.[^.]+\.(downstream_rq_(total|[1-5]xx|time|active|timeout|rx_reset|tx_reset)"
                             r"|downstream_cx_(total|active|destroy.*)|rq_total|no_route)$"}},
    {"safe_regex": {"regex": r"^cluster\.[^.]+\.(upstream_rq_(total|time|active|pending_active|pending_overflow"
                             r"|timeout|per_try_timeout|[1-5]xx|retry.*|rx_reset|tx_reset|maintenance_mode)"
                             r"|upstream_cx_(active|total|connect_fail|connect_timeout|none_healthy|destroy_.*)"
                             r"|outlier_detection\..*|membership_.*|update_.*|retry_or_shadow_abandoned)$"}},
]


def _hcm(stat_prefix: str, routes: dict[str, Any], filters: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                 "HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "http2_protocol_options": {"max_concurrent_streams": 10000},
        # Nothing downstream reads x-request-id; generating one per request is CPU on the hot path.
        "generate_request_id": False,
        # No `server: envoy` on answers (the runtimes send none): one header less to encode and parse.
        "server_header_transformation": "PASS_THROUGH",
        **routes,
        "http_filters": [*filters, {"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
            # No x-envoy-* headers added to requests and answers: nothing reads them.
            "suppress_envoy_headers": True}}],
    }}


def _static_routes(name: str, cluster: str, paths: tuple[str, ...] = ()) -> dict[str, Any]:
    """Everything to ``cluster``, or only these exact paths (anything else: 404)."""
    matches = [{"path": p} for p in paths] or [{"prefix": "/"}]
    return {"route_config": {"name": name, "virtual_hosts": [{
        "name": name, "domains": ["*"],
        "routes": [{"match": m, "route": {"cluster": cluster, "timeout": "0s"}} for m in matches]}]}}


def _listener(name: str, hostport: str, hcm: dict[str, Any], tls: dict[str, Any] | None = None) -> dict[str, Any]:
    chain: dict[str, Any] = {"filters": [hcm]}
    if tls is not None:
        chain["transport_socket"] = tls
    return {"name": name, "address": _addr(hostport),
            "per_connection_buffer_limit_bytes": MAX_REQUEST_BYTES,
            "filter_chains": [chain]}


def bootstrap(cfg: GatewayConfig) -> dict[str, Any]:
    filters = [_body_filter()] if cfg.body_routing else []
    rds = {"rds": {"route_config_name": ROUTE_CONFIG_NAME,
                   "config_source": {"ads": {}, "resource_api_version": "V3"}}}
    # TLS on the public listeners (the stats listener stays plaintext: probes, scrapers).
    public_tls = cfg.tls.listener_socket()
    to_router = cfg.tls.router_socket(["h2"])
    listeners = [_listener("grpc", cfg.listen, _hcm("grpc", rds, filters), public_tls)]
    clusters = [_cluster(ROUTER_CLUSTER, cfg.router, tls=to_router), _cluster(XDS_CLUSTER, cfg.router, tls=to_router)]
    if cfg.stats_listen:
        listeners.append(_listener("stats", cfg.stats_listen, _hcm(
            "stats", _static_routes("stats", ADMIN_CLUSTER, ("/stats/prometheus", "/ready")), [])))
        clusters.append(_cluster(ADMIN_CLUSTER, f"127.0.0.1:{cfg.admin_port}", http2=False))
    if cfg.rest_listen and cfg.router_rest:
        listeners.append(_listener("rest", cfg.rest_listen, _hcm("rest", _static_routes("rest", REST_CLUSTER), []),
                                   public_tls))
        clusters.append(_cluster(REST_CLUSTER, cfg.router_rest, http2=False,
                                 tls=cfg.tls.router_socket(["http/1.1"])))
    return {
        "node": {"id": cfg.node_id, "cluster": "meshserve-gateway"},
        # Loopback only: the admin API can change Envoy's state.
        "admin": {"address": _addr(f"127.0.0.1:{cfg.admin_port}")},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3", "set_node_on_first_message_only": True,
                           "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}]},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"listeners": listeners, "clusters": clusters},
        "stats_config": {"stats_matcher": {"inclusion_list": {"patterns": KEPT_STATS}}},
        # A bound on downstream connections (Envoy warns at start without one).
        "overload_manager": {"resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.resource_monitors."
                                      "downstream_connections.v3.DownstreamConnectionsConfig",
                             "max_active_downstream_connections": 100000}}]},
    }
