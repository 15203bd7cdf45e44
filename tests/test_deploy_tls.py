"""deploy/components/tls: the files the processes read are the ones cert-manager writes and
the pods mount, and the names they check are the names the certificates carry."""

from __future__ import annotations

import fnmatch

import pytest

from tests.deploy_support import meshserve_containers, pod_specs, rendered

#: components/tls, and components/etcd-tls (which includes it and adds etcd's TLS).
VARIANTS = ("cpu+tls", "cpu+etcd-tls")


def _env(container: dict) -> dict[str, str]:  # type: ignore[type-arg]
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


@pytest.mark.parametrize("variant", VARIANTS)
def test_tls_component_mounts_what_each_process_reads_and_names_match(variant: str) -> None:
    objs = rendered(variant)
    certs = {o["metadata"]["name"]: o["spec"] for o in objs if o["kind"] == "Certificate"}
    specs = {w["metadata"]["name"]: s for w, s in pod_specs(objs)}
    for workload, spec, c in meshserve_containers(objs):
        if c["args"][0] not in ("router", "runtime"):  # the Envoy gateway: the test below
            continue
        env = _env(c)
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in specs[workload["metadata"]["name"]]["volumes"]}
        files = [v for k, v in env.items() if k.endswith(("_CERT", "_KEY", "_CA", "_TOKEN_FILE"))]
        assert any(k == "MESHSERVE_TLS_CERT" for k in env), workload["metadata"]["name"]
        for path in files:
            folder = path.rsplit("/", 1)[0]
            assert folder in mounts, f"{path} is not on a mounted volume"
            assert "secret" in volumes[mounts[folder]]
    router_cert = certs["meshserve-router-tls"]
    runtime = next(c for _, _, c in meshserve_containers(objs) if c["args"][0] == "runtime")
    assert _env(runtime)["MESHSERVE_SPI_CLIENT_NAMES"] == router_cert["commonName"]
    assert "client auth" in router_cert["usages"]
    # What routers dial (the advertised name) is a name the runtime certificate covers.
    advertise = runtime["args"][runtime["args"].index("--advertise") + 1]
    host = advertise.rsplit(":", 1)[0].replace("$(MESHSERVE_INSTANCE_ID)", "meshserve-runtime-0")
    assert any(fnmatch.fnmatch(host, pattern) for pattern in certs["meshserve-runtime-tls"]["dnsNames"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_tls_component_wires_the_gateway_and_its_sds_folders(variant: str) -> None:
    objs = rendered(variant)
    workload, spec = next((w, s) for w, s in pod_specs(objs) if w["metadata"]["name"] == "meshserve-router")
    containers = {c["name"]: c for c in spec["containers"]}
    gateway, router = containers["gateway"], containers["router"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    genv, renv = _env(gateway), _env(router)
    gmounts = {m["mountPath"]: m["name"] for m in gateway["volumeMounts"]}
    rmounts = {m["mountPath"]: m["name"] for m in router["volumeMounts"]}
    # Envoy serves the router's certificate and verifies the router with the CA beside it.
    assert genv["MESHSERVE_GATEWAY_TLS_CERT"] == renv["MESHSERVE_TLS_CERT"]
    for key in ("TLS_CERT", "TLS_KEY", "ROUTER_CA", "CLIENT_CERT", "CLIENT_KEY"):
        folder = genv[f"MESHSERVE_GATEWAY_{key}"].rsplit("/", 1)[0]
        assert "secret" in volumes[gmounts[folder]], key
    # The runtime clusters' SDS files (written by the router) name the router's runtime
    # certificate files: Envoy must see both at the same paths.
    for key in ("MESHSERVE_RUNTIME_CA", "MESHSERVE_RUNTIME_CERT", "MESHSERVE_RUNTIME_KEY"):
        folder = renv[key].rsplit("/", 1)[0]
        assert gmounts.get(folder) == rmounts[folder], key

    def volume_of(mounts: dict[str, str], path: str) -> str:
        return next(v for m, v in mounts.items() if path.startswith(m + "/"))

    sds = volume_of(rmounts, renv["MESHSERVE_XDS_SDS_DIR"])
    assert volume_of(gmounts, renv["MESHSERVE_XDS_SDS_DIR"]) == sds and "emptyDir" in volumes[sds]
    assert "emptyDir" in volumes[volume_of(gmounts, genv["MESHSERVE_GATEWAY_SDS_DIR"])]  # writable: read-only root
    numbers = [p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])]
    assert len(numbers) == len(set(numbers)), "two containers of the pod claim one port"


def test_etcd_tls_serves_clients_and_peers_with_certificates_that_name_them() -> None:
    objs = rendered("cpu+etcd-tls")
    etcd_set = next(o for o in objs if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "meshserve-etcd")
    spec = etcd_set["spec"]["template"]["spec"]
    etcd = spec["containers"][0]
    flags = dict(a.removeprefix("--").partition("=")[::2] for a in etcd["args"])
    for key in ("listen-client-urls", "listen-peer-urls", "advertise-client-urls", "initial-advertise-peer-urls"):
        assert flags[key].startswith("https://"), key
    assert all(u.split("=", 1)[1].startswith("https://") for u in flags["initial-cluster"].split(","))
    assert "client-cert-auth" in flags and "peer-client-cert-auth" in flags
    assert flags["listen-metrics-urls"].startswith("http://")  # the probes' port
    assert all(p["httpGet"]["port"] == "metrics" for p in (etcd["livenessProbe"], etcd["readinessProbe"]))
    mounts = {m["mountPath"]: m["name"] for m in etcd["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    for key in ("cert-file", "key-file", "trusted-ca-file", "peer-cert-file", "peer-key-file", "peer-trusted-ca-file"):
        secret = volumes[mounts[flags[key].rsplit("/", 1)[0]]]["secret"]["secretName"]
        assert secret == "meshserve-etcd-tls", key
    cert = next(o["spec"] for o in objs if o["kind"] == "Certificate" and o["metadata"]["name"] == "meshserve-etcd-tls")
    assert {"server auth", "client auth"} <= set(cert["usages"])
    ns = etcd_set["metadata"]["namespace"]
    peer = flags["initial-advertise-peer-urls"].removeprefix("https://").rsplit(":", 1)[0]
    peer = peer.replace("$(POD_NAME)", "meshserve-etcd-0").replace("$(POD_NAMESPACE)", ns)
    assert any(fnmatch.fnmatch(peer, n) for n in cert["dnsNames"]), peer
    config = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("meshserve-config"))
    assert config["data"]["etcd"].rsplit(":", 1)[0] in cert["dnsNames"]
    # Every router and runtime talks TLS to it with a client certificate from a mounted Secret.
    for workload, wspec, c in meshserve_containers(objs):
        if c["args"][0] not in ("router", "runtime"):
            continue
        env = _env(c)
        cmounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        wvolumes = {v["name"]: v for v in wspec["volumes"]}
        for key in ("MESHSERVE_ETCD_CA", "MESHSERVE_ETCD_CERT", "MESHSERVE_ETCD_KEY"):
            assert "secret" in wvolumes[cmounts[env[key].rsplit("/", 1)[0]]], (workload["metadata"]["name"], key)
