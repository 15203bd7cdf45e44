"""deploy/components/tls: the files the processes read are the ones cert-manager writes and
the pods mount, and the names they check are the names the certificates carry."""

from __future__ import annotations

import fnmatch

from tests.deploy_support import meshserve_containers, pod_specs, rendered

VARIANT = "cpu+tls"


def _env(container: dict) -> dict[str, str]:  # type: ignore[type-arg]
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def test_tls_component_mounts_what_each_process_reads_and_names_match() -> None:
    objs = rendered(VARIANT)
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


def test_tls_component_wires_the_gateway_and_its_sds_folders() -> None:
    objs = rendered(VARIANT)
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
