"""The settings deploy/ passes are ones the `meshserve` commands accept.

For every meshserve container of every variant: its args parse with
`mesh.cli.build_parser()`, every `MESHSERVE_*` variable names a field of the
process's settings class, and the ports in its args are the ones its
containerPorts, probes and Services use.

Nothing here skips: the runtime and router parsers and settings classes are
the real ones, so a manifest that drifts from the code fails.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import pytest

from tests.deploy_support import meshserve_containers, pod_specs, rendered, variants
from mesh.cli import build_parser
from mesh.settings import CommonSettings, parse_host_port

#: Flags each process takes, as issues #3 (runtime), #5 (router) and #7 (policy) specify them.
DOCUMENTED_FLAGS = {
    "runtime": {"--listen", "--etcd", "--mesh", "--capacity", "--cache-dir", "--storage-config",
                "--metrics-listen", "--device", "--advertise", "--instance-id", "--labels", "--zone",
                "--policy-file", "--eviction-policy"},
    "router": {"--listen", "--etcd", "--mesh", "--metrics-listen", "--policy-file", "--rest-listen"},
    # Issue #14: Envoy in front of the router (router/xds/gateway.py).
    "gateway": {"--listen", "--router", "--admin-port", "--stats-listen", "--concurrency", "--rest-listen",
                "--router-rest", "--node-id", "--envoy-log-level"},
}
#: (module, class) of each process's settings.
SETTINGS_CLASSES = {
    "runtime": ("mesh.runtime.settings", "RuntimeSettings"),
    "router": ("router.settings", "RouterSettings"),
    "gateway": ("router.xds.gateway", "GatewaySettings"),
}
#: ModelMesh's default ports (reference/modelmesh-wire.md), which clients expect: the
#: front door (Envoy, the gateway container) on 8033; the router behind it on 8034.
DEFAULT_PORTS = {"runtime": 8085, "router": 8034, "gateway": 8033}
#: The container port each process's --listen is, and the one its metrics flag is.
GRPC_PORT = {"runtime": "grpc", "router": "router-grpc", "gateway": "grpc"}
METRICS_PORT = {"runtime": ("--metrics-listen", "metrics"), "router": ("--metrics-listen", "metrics"),
                "gateway": ("--stats-listen", "envoy-stats")}
#: What the kubelet puts in downward-API variables, for checking expanded values.
FIELD_SAMPLES = {"metadata.name": "meshserve-runtime-0", "metadata.namespace": "meshserve", "status.podIP": "10.1.2.3"}

CASES = [
    pytest.param(variant, i, id=f"{variant}-{c['name']}")
    for variant in sorted(variants())
    for i, (_, _, c) in enumerate(meshserve_containers(rendered(variant)))
]


def container_case(variant: str, index: int) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any], dict[str, Any]]:
    objs = rendered(variant)
    workload, spec, container = list(meshserve_containers(objs))[index]
    return objs, workload, spec, container


def flag_values(args: list[str]) -> dict[str, str]:
    """{'--listen': '0.0.0.0:8085', ...} from `--flag value` and `--flag=value`."""
    values, i = {}, 1  # args[0] is the subcommand
    while i < len(args):
        flag = args[i]
        assert flag.startswith("--"), f"unexpected positional argument {flag!r} in {args}"
        if "=" in flag:
            name, _, value = flag.partition("=")
            i += 1
        else:
            name, value = flag, args[i + 1]
            i += 2
        assert name not in values, f"{name} given twice"
        values[name] = value
    return values


def env_values(objs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet would set it."""
    config_maps = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            value = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], var["value"])
        elif "configMapKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["configMapKeyRef"]
            value = config_maps[ref["name"]]["data"][ref["key"]]
        else:
            value = FIELD_SAMPLES[var["valueFrom"]["fieldRef"]["fieldPath"]]
        env[var["name"]] = value
    return env


def settings_class(process: str) -> type | None:
    module, name = SETTINGS_CLASSES[process]
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def env_names(cls: type) -> set[str]:
    prefix = cls.model_config.get("env_prefix", "")  # type: ignore[attr-defined]
    names = set()
    for field, info in cls.model_fields.items():  # type: ignore[attr-defined]
        names.add(f"{prefix}{field}".upper())
        if isinstance(info.validation_alias, str):
            names.add(info.validation_alias.upper())
    return names


def test_every_variant_runs_a_router_and_runtimes() -> None:
    for variant in variants():
        processes = sorted(c["args"][0] for _, _, c in meshserve_containers(rendered(variant)))
        assert processes == ["gateway", "router", "runtime"], variant
        # Envoy fronts the router in its pod: its router is on loopback.
        router_pod = next(s for w, s in pod_specs(rendered(variant)) if w["metadata"]["name"] == "meshserve-router")
        gateway = next(c for c in router_pod["containers"] if c["args"][0] == "gateway")
        router = next(c for c in router_pod["containers"] if c["args"][0] == "router")
        assert parse_host_port(flag_values(gateway["args"])["--router"]) == (
            "127.0.0.1", parse_host_port(flag_values(router["args"])["--listen"])[1])


@pytest.mark.parametrize("variant,index", CASES)
def test_args_parse_with_the_meshserve_parser(variant: str, index: int) -> None:
    _, _, _, container = container_case(variant, index)
    # No command override: the image's ENTRYPOINT is `meshserve`.
    assert "command" not in container
    args = container["args"]
    process = args[0]
    flags = flag_values(args)
    assert set(flags) <= DOCUMENTED_FLAGS[process], f"undocumented flags: {set(flags) - DOCUMENTED_FLAGS[process]}"
    try:
        namespace = build_parser().parse_args(args)
    except SystemExit:  # argparse has printed why
        pytest.fail(f"`meshserve {' '.join(args)}` is refused by the parser")
    assert namespace.command == process
    for flag, value in flags.items():
        key = flag[2:].replace("-", "_")
        parsed = getattr(namespace, key, None)
        assert parsed is not None, f"{flag} did not set {key!r} on the namespace"
        if isinstance(parsed, str):  # sizes and label lists may be parsed further
            assert parsed == value, f"{flag} {value!r} parsed as {parsed!r}"


@pytest.mark.parametrize("variant,index", CASES)
def test_flag_values_are_well_formed(variant: str, index: int) -> None:
    _, _, _, container = container_case(variant, index)
    flags = flag_values(container["args"])
    for flag in ("--listen", "--metrics-listen", "--advertise", "--etcd", "--router", "--stats-listen",
                 "--rest-listen", "--router-rest"):
        if flag in flags:
            parse_host_port(flags[flag], what=flag)
    if "--device" in flags:
        assert re.fullmatch(r"cpu|cuda(:\d+)?", flags["--device"])
    if "--labels" in flags:
        assert all(re.fullmatch(r"[\w.-]+=[\w.-]*", kv) for kv in flags["--labels"].split(","))


@pytest.mark.parametrize("variant,index", CASES)
def test_environment_names_settings_fields(variant: str, index: int) -> None:
    objs, _, _, container = container_case(variant, index)
    process = container["args"][0]
    env = {k: v for k, v in env_values(objs, container).items() if k.startswith("MESHSERVE_")}
    common = env_names(CommonSettings)
    # Whatever the process class, the shared settings must accept their values.
    shared: dict[str, Any] = {k.removeprefix("MESHSERVE_").lower(): v for k, v in env.items() if k in common}
    CommonSettings(**shared)
    cls = settings_class(process)
    assert cls is not None, f"no settings class for `meshserve {process}`"
    unknown = set(env) - env_names(cls)
    assert not unknown, f"{cls.__name__} has no field for {sorted(unknown)}"


@pytest.mark.parametrize("variant,index", CASES)
def test_settings_build_from_the_manifest(variant: str, index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the entry point does: flags over MESHSERVE_* variables, into the class."""
    from mesh.cli.common import build_settings

    objs, _, _, container = container_case(variant, index)
    process = container["args"][0]
    cls = settings_class(process)
    assert cls is not None, f"no settings class for `meshserve {process}`"
    namespace = build_parser().parse_args(container["args"])
    for name, value in env_values(objs, container).items():
        monkeypatch.setenv(name, value)
    build_settings(cls, namespace)


@pytest.mark.parametrize("variant,index", CASES)
def test_ports_agree_across_args_probes_and_services(variant: str, index: int) -> None:
    objs, workload, spec, container = container_case(variant, index)
    process = container["args"][0]
    flags = flag_values(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    listen = parse_host_port(flags["--listen"])[1]
    assert listen == ports[GRPC_PORT[process]] == DEFAULT_PORTS[process]
    metrics_flag, metrics_port = METRICS_PORT[process]
    assert parse_host_port(flags[metrics_flag])[1] == ports[metrics_port]
    # A TLS port cannot answer kubelet probes: they go to the plaintext health port then.
    health = env_values(objs, container).get("MESHSERVE_HEALTH_LISTEN")
    probe_ports = (listen, GRPC_PORT[process]) if health is None else (parse_host_port(health)[1], "health")
    if health is not None:
        assert ports["health"] == parse_host_port(health)[1]
    if process == "gateway":  # KServe's REST port (issue #11), passed on to the router's REST listener
        assert parse_host_port(flags["--rest-listen"])[1] == ports["http"] == 8008
        router = next(c for c in spec["containers"] if c["name"] == "router")
        assert flags["--router-rest"] == flag_values(router["args"])["--rest-listen"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if process == "gateway":  # Envoy's own readiness, served by its stats listener
            assert container[probe]["httpGet"] == {"path": "/ready", "port": metrics_port}
        else:
            assert container[probe]["grpc"]["port"] in probe_ports
    advertise = env_values(objs, container).get("MESHSERVE_ADVERTISE", flags.get("--advertise"))
    if advertise is not None:
        assert parse_host_port(advertise)[1] == listen, "routers would dial the wrong port"
    pod_ports = {p["name"]: p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])}
    assert len(pod_ports) == sum(len(c.get("ports", [])) for c in spec["containers"]), "a port name is used twice"
    labels = workload["spec"]["template"]["metadata"]["labels"]
    services = [o for o in objs if o["kind"] == "Service" and o["spec"]["selector"].items() <= labels.items()]
    assert services, "no Service selects these pods"
    for svc in services:
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in pod_ports or target in pod_ports.values(), f"{svc['metadata']['name']}: no port {target}"
        grpc_port = next(p for p in svc["spec"]["ports"] if p["name"] == "grpc")
        # The Service's grpc port is the pod's front door: ModelMesh's port, onto the gateway or runtime.
        assert grpc_port["port"] == DEFAULT_PORTS["gateway" if "gateway" in [
            c["args"][0] for c in spec["containers"] if "args" in c] else process]
        if grpc_port.get("targetPort") == "grpc" and "grpc" in ports:
            assert process in ("gateway", "runtime")


@pytest.mark.parametrize("variant", sorted(variants()))
def test_the_etcd_setting_names_a_service_when_etcd_is_bundled(variant: str) -> None:
    objs = rendered(variant)
    etcd = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "meshserve-config")["data"]["etcd"]
    host, port = parse_host_port(etcd)
    if not any(o["kind"] == "StatefulSet" and o["metadata"]["name"] == "meshserve-etcd" for o in objs):
        pytest.skip("etcd is external in this variant: its address is the user's to give")
    service = next(o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == host)
    assert port in [p["port"] for p in service["spec"]["ports"]]
    etcd_spec = next(s for w, s in pod_specs(objs) if w["metadata"]["name"] == "meshserve-etcd")
    # http, or https with components/etcd-tls
    assert any(a in (f"--listen-client-urls=http://0.0.0.0:{port}", f"--listen-client-urls=https://0.0.0.0:{port}")
               for a in etcd_spec["containers"][0]["args"])
