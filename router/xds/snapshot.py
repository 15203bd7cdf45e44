"""``build_snapshot(view)``: Envoy's clusters and routes, a pure function of an XdsView.

Clusters: one per distinct set of instances holding a model (``copies_<set>``,
least-request over those runtimes), and beside it an aggregate
``route_<set>`` = [copies, router]: retries go to another copy first and, once
every copy was tried, to the router (priority 1), which loads elsewhere. Models
sharing a copy set share its clusters, so a few clusters serve thousands of
models and a copy that moves changes one route entry.

Routes: one route configuration whose virtual host uses Envoy's matcher tree
(exact-match maps: O(1) in the number of models; one entry per model, shared
route messages). Under the ``/inference.GRPCInferenceService/Model*`` paths:
``mm-body-model`` naming a vmodel (the gateway's body filter sets it, with
``mm-model-id``, from field 1 of the request: a body name is a vmodel first, as
in the router), then ``mm-model-id`` -> a model, then ``mm-vmodel-id`` -> a
vmodel (``mm-model-id`` set to its concrete model). Anything else — no
header, a model without loaded copies, management and admin calls — goes to
the router cluster (which reads a body-set ``mm-model-id`` as a body name).

The version of each resource type is a hash of its serialised resources, so
every router replica computes the same versions from the same registry state.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.clusters.aggregate.v3 import cluster_pb2 as aggregate_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import previous_priorities_config_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import http_inputs_pb2, string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2
from google.protobuf.message import Message
from xds.core.v3 import extension_pb2 as xds_extension_pb2
from xds.type.matcher.v3 import matcher_pb2

from router.xds.view import XdsView

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
#: The route configuration the gateway's listener asks for over RDS.
ROUTE_CONFIG_NAME = "meshserve"
#: The router, defined in the gateway's bootstrap (not over xDS: it must exist before xDS does).
ROUTER_CLUSTER = "router"
#: Set by the gateway's body filter from field 1 of ModelInfer / ModelMetadata requests.
BODY_HEADER = "mm-body-model"
MODEL_HEADER = "mm-model-id"
VMODEL_HEADER = "mm-vmodel-id"
#: Inference calls that may go straight to a runtime (ModelInfer, ModelMetadata, ModelReady...).
MODEL_PATH_PREFIX = "/inference.GRPCInferenceService/Model"
#: ModelStreamInfer: every stream goes to the router (requests of one stream are routed one by one).
STREAM_PATH = "/inference.GRPCInferenceService/ModelStreamInfer"
#: Largest request body Envoy buffers (for retries and for reading field 1).
MAX_REQUEST_BYTES = 64 * 2**20
#: Envoy's defaults (1024 requests, 3 retries at once per cluster) would fail requests under load.
_LIMIT = 1_000_000
HTTP2_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


@dataclass(frozen=True, slots=True)
class Snapshot:
    clusters: Mapping[str, cluster_pb2.Cluster]
    routes: route_pb2.RouteConfiguration
    cluster_version: str
    route_version: str


def _pack(msg: Message) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def _ms(ms: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def set_name(instances: Iterable[str]) -> str:
    """A stable, stat-safe name for a set of instances (hashed when long)."""
    joined = "+".join(sorted(instances))
    safe = re.sub(r"[^A-Za-z0-9_+-]", "_", joined)
    if len(safe) <= 80 and safe == joined:
        return safe
    return "h" + hashlib.sha256(joined.encode()).hexdigest()[:20]


def _address(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def _is_ip(host: str) -> bool:
    return bool(re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]+", host))


def _http2() -> dict[str, any_pb2.Any]:
    opts = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions(
                max_concurrent_streams=wrappers_pb2.UInt32Value(value=10_000))))
    return {HTTP2_OPTIONS: _pack(opts)}


def _limits() -> circuit_breaker_pb2.CircuitBreakers:
    t = circuit_breaker_pb2.CircuitBreakers.Thresholds(
        max_connections=wrappers_pb2.UInt32Value(value=_LIMIT),
        max_pending_requests=wrappers_pb2.UInt32Value(value=_LIMIT),
        max_requests=wrappers_pb2.UInt32Value(value=_LIMIT),
        max_retries=wrappers_pb2.UInt32Value(value=_LIMIT))
    return circuit_breaker_pb2.CircuitBreakers(thresholds=[t])


def copies_cluster(name: str, endpoints: list[str],
                   transport_socket: base_pb2.TransportSocket | None = None) -> cluster_pb2.Cluster:
    """``transport_socket``: TLS to the runtimes (router/xds/tls.py), when they serve it."""
    addrs = [_address(e) for e in endpoints]
    lb = [endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=h, port_value=p))))
        for h, p in addrs]
    static = all(_is_ip(h) for h, _ in addrs)
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC if static else cluster_pb2.Cluster.STRICT_DNS,
        connect_timeout=_ms(1000),
        lb_policy=cluster_pb2.Cluster.LEAST_REQUEST,
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name, endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=lb)]),
        typed_extension_protocol_options=_http2(),
        circuit_breakers=_limits(),
        # A runtime that stopped answering (killed: its copies stay until its lease runs out)
        # is set aside after a few failed connections; with every copy set aside (no panic
        # routing) the aggregate sends the model's requests to the router.
        outlier_detection=outlier_detection_pb2.OutlierDetection(
            split_external_local_origin_errors=True,
            consecutive_local_origin_failure=wrappers_pb2.UInt32Value(value=3),
            enforcing_consecutive_local_origin_failure=wrappers_pb2.UInt32Value(value=100),
            enforcing_consecutive_5xx=wrappers_pb2.UInt32Value(value=0),
            enforcing_consecutive_gateway_failure=wrappers_pb2.UInt32Value(value=0),
            enforcing_success_rate=wrappers_pb2.UInt32Value(value=0),
            enforcing_local_origin_success_rate=wrappers_pb2.UInt32Value(value=0),
            interval=_ms(1000), base_ejection_time=_ms(5000),
            max_ejection_percent=wrappers_pb2.UInt32Value(value=100)),
        common_lb_config=cluster_pb2.Cluster.CommonLbConfig(healthy_panic_threshold=percent_pb2.Percent(value=0)),
        transport_socket=transport_socket,
    )


def fallback_cluster(name: str, copies: str) -> cluster_pb2.Cluster:
    """Aggregate: the copies at priority 0, the router at priority 1."""
    return cluster_pb2.Cluster(
        name=name,
        connect_timeout=_ms(1000),
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        cluster_type=cluster_pb2.Cluster.CustomClusterType(
            name="envoy.clusters.aggregate",
            typed_config=_pack(aggregate_pb2.ClusterConfig(clusters=[copies, ROUTER_CLUSTER]))),
        circuit_breakers=_limits(),
    )


def direct_retry(copies: int) -> rc.RetryPolicy:
    """Another copy on a reset, UNAVAILABLE or NOT_FOUND (evicted), then the router."""
    return rc.RetryPolicy(
        retry_on="connect-failure,refused-stream,reset,unavailable,retriable-headers",
        num_retries=wrappers_pb2.UInt32Value(value=copies),
        # A runtime that just evicted the model answers NOT_FOUND "... not loaded" (trailers-only,
        # so grpc-status is a response header); the router answers authoritatively after that.
        retriable_headers=[rc.HeaderMatcher(name="grpc-status", string_match=string_pb2.StringMatcher(exact="5"))],
        retry_host_predicate=[rc.RetryPolicy.RetryHostPredicate(
            name="envoy.retry_host_predicates.previous_hosts",
            typed_config=_pack(previous_hosts_pb2.PreviousHostsPredicate()))],
        host_selection_retry_max_attempts=8,
        # After every copy was tried once, priority 0 is excluded: the next attempt goes to the router.
        retry_priority=rc.RetryPolicy.RetryPriority(
            name="envoy.retry_priorities.previous_priorities",
            typed_config=_pack(previous_priorities_config_pb2.PreviousPrioritiesConfig(update_frequency=copies))),
        retry_back_off=rc.RetryPolicy.RetryBackOff(base_interval=_ms(2), max_interval=_ms(20)),
    )


def router_retry() -> rc.RetryPolicy:
    # Only where the request never reached a router (safe for management calls too).
    return rc.RetryPolicy(retry_on="connect-failure,refused-stream", num_retries=wrappers_pb2.UInt32Value(value=2),
                          retry_back_off=rc.RetryPolicy.RetryBackOff(base_interval=_ms(25), max_interval=_ms(250)))


def _route(cluster: str, retry: rc.RetryPolicy | None, model_id: str | None = None,
           remove: tuple[str, ...] = ()) -> rc.Route:
    """``retry`` None: the virtual host's (one copy, then the router). ``model_id``: set ``mm-model-id``."""
    action = rc.RouteAction(
        cluster=cluster,
        timeout=duration_pb2.Duration(),  # no route timeout: the client's grpc-timeout is the deadline
        max_stream_duration=rc.RouteAction.MaxStreamDuration(grpc_timeout_header_max=duration_pb2.Duration()),
    )
    if retry is not None:
        action.retry_policy.CopyFrom(retry)
    route = rc.Route(match=rc.RouteMatch(prefix="/"), route=action, request_headers_to_remove=list(remove))
    if model_id is not None:
        route.request_headers_to_add.append(base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=MODEL_HEADER, value=model_id),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD))
    return route


def _on_route(route: rc.Route) -> matcher_pb2.Matcher.OnMatch:
    return matcher_pb2.Matcher.OnMatch(action=xds_extension_pb2.TypedExtensionConfig(name="route", typed_config=_pack(route)))


def _header_map(header: str, entries: Mapping[str, matcher_pb2.Matcher.OnMatch],
                otherwise: matcher_pb2.Matcher.OnMatch) -> matcher_pb2.Matcher.OnMatch:
    """Exact match on one header's value; a missing header or an unknown value -> ``otherwise``."""
    if not entries:
        return otherwise
    tree = matcher_pb2.Matcher.MatcherTree(input=xds_extension_pb2.TypedExtensionConfig(
        name=header, typed_config=_pack(http_inputs_pb2.HttpRequestHeaderMatchInput(header_name=header))))
    table = tree.exact_match_map.map
    for key, on_match in entries.items():
        table[key].CopyFrom(on_match)
    return matcher_pb2.Matcher.OnMatch(matcher=matcher_pb2.Matcher(matcher_tree=tree, on_no_match=otherwise))


def build_snapshot(view: XdsView, runtime_tls: base_pb2.TransportSocket | None = None) -> Snapshot:
    clusters: dict[str, cluster_pb2.Cluster] = {}
    #: copy set -> its route (no header changes): one message reused by every model on the set.
    plain: dict[tuple[str, ...], tuple[str, rc.RetryPolicy | None, matcher_pb2.Matcher.OnMatch]] = {}
    for holders in view.models.values():
        if holders in plain:
            continue
        name = set_name(holders)
        clusters[f"copies_{name}"] = copies_cluster(f"copies_{name}", [view.endpoints[i] for i in holders],
                                                    runtime_tls)
        clusters[f"route_{name}"] = fallback_cluster(f"route_{name}", f"copies_{name}")
        # One copy: the virtual host's policy (that copy, then the router) keeps routes small.
        retry = direct_retry(len(holders)) if len(holders) > 1 else None
        plain[holders] = (f"route_{name}", retry, _on_route(_route(f"route_{name}", retry)))

    to_router = _on_route(_route(ROUTER_CLUSTER, router_retry()))

    def with_id(model_id: str, remove: tuple[str, ...]) -> matcher_pb2.Matcher.OnMatch:
        cluster, retry, _ = plain[view.models[model_id]]
        return _on_route(_route(cluster, retry, model_id, remove))

    routed = {v: m for v, m in view.vmodels.items() if m in view.models}
    # Lookup order: a body name that is a vmodel (the gateway's filter sets mm-body-model and
    # mm-model-id from field 1; a vmodel wins there, as in the router), then mm-model-id, then
    # mm-vmodel-id; no match anywhere: the router.
    tree = _header_map(VMODEL_HEADER, {v: with_id(m, (VMODEL_HEADER,)) for v, m in routed.items()}, to_router)
    tree = _header_map(MODEL_HEADER, {m: plain[h][2] for m, h in view.models.items()}, tree)
    tree = _header_map(BODY_HEADER, {v: with_id(routed[v], ()) if v in routed else to_router
                                     for v in view.vmodels}, tree)
    vhost = rc.VirtualHost(name="meshserve", domains=["*"], retry_policy=direct_retry(1),
                           request_body_buffer_limit=wrappers_pb2.UInt64Value(value=MAX_REQUEST_BYTES))
    if tree is to_router:
        # Nothing is loaded: every request goes to the router.
        vhost.routes.append(_route(ROUTER_CLUSTER, router_retry()))
    else:
        vhost.matcher.CopyFrom(matcher_pb2.Matcher(
            matcher_tree=matcher_pb2.Matcher.MatcherTree(
                input=xds_extension_pb2.TypedExtensionConfig(
                    name="path", typed_config=_pack(http_inputs_pb2.HttpRequestHeaderMatchInput(header_name=":path"))),
                # The longest prefix wins: streams always go to the router, which routes, loads
                # and retries each request of a stream on its own (one stream may name many models).
                prefix_match_map=matcher_pb2.Matcher.MatcherTree.MatchMap(
                    map={MODEL_PATH_PREFIX: tree, STREAM_PATH: to_router})),
            on_no_match=to_router))
    routes = route_pb2.RouteConfiguration(name=ROUTE_CONFIG_NAME, virtual_hosts=[vhost])
    return Snapshot(clusters, routes, version_of(clusters[k] for k in sorted(clusters)), version_of([routes]))


def version_of(resources: Iterable[Message]) -> str:
    h = hashlib.sha256()
    for r in resources:
        h.update(r.SerializeToString(deterministic=True))
        h.update(b"\0")
    return h.hexdigest()[:16]
