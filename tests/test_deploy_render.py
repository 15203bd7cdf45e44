"""Every variant of deploy/ renders, and every object is valid Kubernetes.

Rendering: tests/kustomize_lite.py (checked against `kubectl kustomize` in
test_kustomize_lite.py, which fails without a kubectl). Schemas: the `kubernetes-validate`
package's offline JSON schemas for the oldest supported and the newest Kubernetes,
strict (unknown fields rejected). ServiceMonitor is a CRD: checked against the prometheus-operator
models of `cloudcoil-models-prometheus-operator` (generated from its CRD schema).
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy_support import DEPLOY, meshserve_containers, pod_specs, rendered, variants

VARIANTS = sorted(variants())
#: The oldest Kubernetes deploy/README.md promises (native gRPC probes are GA in
#: 1.27) and the newest the schemas know.
K8S_VERSIONS = ["1.27.0", kubernetes_validate.utils.latest_version()]
CRD_KINDS = {"ServiceMonitor", "Certificate", "Issuer"}
#: Secrets the operator creates (deploy/README.md "TLS and tokens"), not rendered here.
OPERATOR_SECRETS = {"meshserve-auth"}
#: Metric names of issue #7 that the dashboard is built on (README "Metrics"; the
#: end-to-end test in tests/test_metrics_e2e.py scrapes them from real processes).
METRICS = {
    "meshserve_requests_total", "meshserve_request_seconds", "meshserve_cache_hits_total",
    "meshserve_cache_misses_total", "meshserve_model_loads_total", "meshserve_model_load_seconds",
    "meshserve_model_unloads_total", "meshserve_evictions_total", "meshserve_models_loaded",
    "meshserve_capacity_bytes", "meshserve_used_bytes",
    "meshserve_load_queue_seconds", "meshserve_cache_miss_seconds", "meshserve_lru_age_seconds",
    "meshserve_age_at_eviction_seconds", "meshserve_models_by_copies", "meshserve_models_with_failures",
    "meshserve_puller_bytes_total", "meshserve_puller_pull_seconds", "meshserve_puller_cache_hits_total",
    "meshserve_etcd_errors_total", "meshserve_policy_revision", "meshserve_policy_errors_total",
    "meshserve_xds_pushes_total", "meshserve_xds_nacks_total", "meshserve_xds_streams",
}
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")


def by_kind(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def runtime_container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    sts = by_kind(objs, "StatefulSet")["meshserve-runtime"]
    return sts["spec"]["template"]["spec"]["containers"][0]


def test_the_expected_variants_exist() -> None:
    assert {"cpu", "gpu", "external-etcd", "cpu+hpa-requests-per-second"} <= set(VARIANTS)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_objects_match_kubernetes_schemas(variant: str, version: str) -> None:
    objs = rendered(variant)
    assert objs
    problems = []
    for obj in objs:
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as e:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {e.message}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("variant", VARIANTS)
def test_service_monitor_matches_the_prometheus_operator_crd(variant: str) -> None:
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

    monitors = [o for o in rendered(variant) if o["kind"] == "ServiceMonitor"]
    assert monitors
    for obj in monitors:
        model = ServiceMonitor.model_validate(obj)
        # The models ignore unknown fields; a field dropped on the round trip is one
        # the CRD does not have (a typo would otherwise pass).
        assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == obj


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_container_has_valid_requests_and_limits(variant: str) -> None:
    objs = rendered(variant)
    for workload, spec in pod_specs(objs):
        for c in spec["containers"]:
            res = c.get("resources", {})
            where = f"{workload['metadata']['name']}/{c['name']}"
            assert {"cpu", "memory"} <= set(res.get("requests", {})), where
            assert {"cpu", "memory"} <= set(res.get("limits", {})), where
            for value in [*res["requests"].values(), *res["limits"].values()]:
                assert QUANTITY.match(str(value)), f"{where}: bad quantity {value!r}"
    for sts in by_kind(objs, "StatefulSet").values():
        for claim in sts["spec"].get("volumeClaimTemplates", []):
            assert QUANTITY.match(claim["spec"]["resources"]["requests"]["storage"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_meshserve_pods_probe_over_grpc_and_drain(variant: str) -> None:
    for workload, spec, c in meshserve_containers(rendered(variant)):
        where = workload["metadata"]["name"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if c["args"][0] == "gateway":  # Envoy: its /ready, on the stats listener
                assert c[probe]["httpGet"]["path"] == "/ready", f"{where}: {probe} is not Envoy's /ready"
                continue
            assert "grpc" in c[probe], f"{where}: {probe} is not a gRPC health probe"
        pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        # The grace period covers the pre-stop pause and leaves time to drain.
        assert spec["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + 20, where
        assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] != 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_references_between_objects_resolve(variant: str) -> None:
    objs = rendered(variant)
    config_maps, secrets = by_kind(objs, "ConfigMap"), set(by_kind(objs, "Secret")) | OPERATOR_SECRETS
    # cert-manager writes each Certificate's Secret; CA issuers read one.
    secrets |= {c["spec"]["secretName"] for c in objs if c["kind"] == "Certificate"}
    for issuer in (o for o in objs if o["kind"] == "Issuer" and "ca" in o["spec"]):
        assert issuer["spec"]["ca"]["secretName"] in secrets
    services = by_kind(objs, "Service")
    workloads = {o["metadata"]["name"]: o for o, _ in pod_specs(objs)}
    pod_labels = [w["spec"]["template"]["metadata"]["labels"] for w in workloads.values()]

    def selects_pods(selector: dict[str, str]) -> bool:
        return any(selector.items() <= labels.items() for labels in pod_labels)

    for w, spec in pod_specs(objs):
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets
        for c in spec["containers"]:
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    assert ref["key"] in config_maps[ref["name"]]["data"], env["name"]
        own = w["spec"]["template"]["metadata"]["labels"]
        assert w["spec"]["selector"]["matchLabels"].items() <= own.items()
        for tsc in spec.get("topologySpreadConstraints", []):
            assert tsc["labelSelector"]["matchLabels"].items() <= own.items()
        if w["kind"] == "StatefulSet":
            assert services[w["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    for svc in services.values():
        assert selects_pods(svc["spec"]["selector"]), svc["metadata"]["name"]
    for pdb in by_kind(objs, "PodDisruptionBudget").values():
        assert selects_pods(pdb["spec"]["selector"]["matchLabels"]), pdb["metadata"]["name"]
    for hpa in by_kind(objs, "HorizontalPodAutoscaler").values():
        assert hpa["spec"]["scaleTargetRef"]["name"] in workloads
    for monitor in (o for o in objs if o["kind"] == "ServiceMonitor"):
        wanted = monitor["spec"]["selector"]["matchLabels"].items()
        scraped = {n for n, s in services.items() if wanted <= s["metadata"]["labels"].items()}
        # meshserve: router and runtimes; meshserve-envoy: the router pods' Envoy.
        assert scraped == ({"meshserve-router"} if monitor["metadata"]["name"] == "meshserve-envoy"
                           else {"meshserve-router", "meshserve-runtime"})
        for name in scraped:
            port_names = {p["name"] for p in services[name]["spec"]["ports"]}
            assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names


@pytest.mark.parametrize("variant", VARIANTS)
def test_router_is_replicated_and_protected(variant: str) -> None:
    objs = rendered(variant)
    assert by_kind(objs, "Deployment")["meshserve-router"]["spec"]["replicas"] >= 2
    hpa = by_kind(objs, "HorizontalPodAutoscaler")["meshserve-router"]
    assert hpa["spec"]["minReplicas"] >= 2
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])
    assert set(by_kind(objs, "PodDisruptionBudget")) >= {"meshserve-router", "meshserve-runtime"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_runtimes_spread_over_nodes_and_zones(variant: str) -> None:
    sts = by_kind(rendered(variant), "StatefulSet")["meshserve-runtime"]
    keys = {t["topologyKey"] for t in sts["spec"]["template"]["spec"]["topologySpreadConstraints"]}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}


def test_gpu_runtimes_get_one_gpu_and_measure_their_capacity() -> None:
    objs = rendered("gpu")
    spec = by_kind(objs, "StatefulSet")["meshserve-runtime"]["spec"]["template"]["spec"]
    c = runtime_container(objs)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["args"][c["args"].index("--device") + 1] == "cuda"
    assert "--capacity" not in c["args"]
    assert c["image"].endswith("-cuda")
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    # Routers need no GPU and run the CPU image.
    router = by_kind(objs, "Deployment")["meshserve-router"]["spec"]["template"]["spec"]
    assert router["containers"][0]["image"].endswith("-cpu") and "nodeSelector" not in router


@pytest.mark.parametrize("variant", ["cpu", "external-etcd"])
def test_cpu_runtimes_fit_their_capacity_in_their_memory_limit(variant: str) -> None:
    from mesh.settings import parse_bytes

    c = runtime_container(rendered(variant))
    assert c["args"][c["args"].index("--device") + 1] == "cpu"
    capacity = parse_bytes(c["args"][c["args"].index("--capacity") + 1])
    limit = parse_bytes(c["resources"]["limits"]["memory"])
    assert capacity <= limit - 1024**3, "leave at least 1 GiB for the process itself"
    assert "nvidia.com/gpu" not in c["resources"]["limits"]


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_bundled_etcd_has_three_persistent_members(variant: str) -> None:
    objs = rendered(variant)
    sts = by_kind(objs, "StatefulSet")["meshserve-etcd"]
    assert sts["spec"]["replicas"] == 3 and sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    headless = by_kind(objs, "Service")[sts["spec"]["serviceName"]]
    assert headless["spec"]["publishNotReadyAddresses"] is True
    client = by_kind(objs, "ConfigMap")["meshserve-config"]["data"]["etcd"]
    assert client == "meshserve-etcd:2379" and "meshserve-etcd" in by_kind(objs, "Service")
    initial = next(a for a in sts["spec"]["template"]["spec"]["containers"][0]["args"] if "--initial-cluster=" in a)
    assert initial.count("=http://") == 3


def test_external_etcd_is_one_setting_and_no_etcd_pods() -> None:
    objs = rendered("external-etcd")
    assert "meshserve-etcd" not in by_kind(objs, "StatefulSet")
    assert not any(o["metadata"]["name"].startswith("meshserve-etcd") for o in objs)
    etcd = by_kind(objs, "ConfigMap")["meshserve-config"]["data"]["etcd"]
    assert etcd != "meshserve-etcd:2379"


@pytest.mark.parametrize("variant", VARIANTS)
def test_storage_config_is_a_read_only_secret_with_placeholders_only(variant: str) -> None:
    objs = rendered(variant)
    secret = by_kind(objs, "Secret")["meshserve-storage-config"]
    for encoded in secret["data"].values():
        config = json.loads(base64.b64decode(encoded))
        for storage in config.values():  # ModelMesh format: one object per storage key
            for field in ("access_key_id", "secret_access_key"):
                assert storage.get(field, "REPLACE").startswith("REPLACE"), "a real credential is committed"
    c = runtime_container(objs)
    mount = next(m for m in c["volumeMounts"] if m["name"] == "storage-config")
    assert mount["readOnly"] is True
    path = c["args"][c["args"].index("--storage-config") + 1]
    assert path.startswith(mount["mountPath"] + "/") and path.rpartition("/")[2] in secret["data"]


def test_requests_per_second_autoscaling_is_optional() -> None:
    assert not any(m["type"] == "Pods" for m in by_kind(rendered("cpu"), "HorizontalPodAutoscaler")["meshserve-router"]["spec"]["metrics"])
    hpa = by_kind(rendered("cpu+hpa-requests-per-second"), "HorizontalPodAutoscaler")["meshserve-router"]
    pods = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods == ["meshserve_requests_per_second"]
    rule = (DEPLOY / "components" / "hpa-requests-per-second" / "prometheus-adapter-rule.yaml").read_text()
    # Envoy's downstream count: most requests never reach the router (issue #14).
    assert 'as: "meshserve_requests_per_second"' in rule and "- seriesQuery: 'envoy_http_downstream_rq_total{" in rule


def test_dashboard_is_shipped_as_a_config_map_built_on_the_metric_names() -> None:
    text = (DEPLOY / "grafana" / "meshserve-dashboard.json").read_text()
    dashboard = json.loads(text)
    cm = by_kind(rendered("cpu"), "ConfigMap")["meshserve-grafana-dashboard"]
    assert cm["data"]["meshserve-dashboard.json"] == text
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"\bmeshserve_[a-z_]+", e)}
    assert used == METRICS, f"unknown: {used - METRICS}, unused: {METRICS - used}"
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("request rate", "latency", "hit ratio", "evictions", "models loaded", "capacity", "queue",
                  "lru age", "copies per model", "puller", "etcd", "policy", "envoy", "xds"):
        assert topic in titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
