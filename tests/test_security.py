"""TLS, mTLS, certificate rotation, tokens, the runtime's SPI gate and model roots,
with real router and runtime processes, real etcd and real gRPC clients."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as v2
from tritonclient.grpc import service_pb2_grpc as v2_grpc

from mesh import modelgen
from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.proto.mmesh import model_mesh_pb2_grpc as mm_grpc
from mesh.proto.mmesh import model_runtime_pb2 as spi
from mesh.proto.mmesh import model_runtime_pb2_grpc as spi_grpc
from mesh.security.certs import ROUTER_NAME, LocalPki, ensure_ca, issue
from tests.procs import ROOT, start_runtime
from tests.security_support import cluster_status, rpc_code, start_router, tls_channel

ONNX_ONLY = {"MESHSERVE_MODEL_TYPES": "onnx"}
SPEC = modelgen.spec_for_bytes(20_000, seed=3)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return modelgen.write_onnx_mlp(SPEC, tmp_path / "models" / "m.onnx")


def tls_args(pair, ca=None) -> list[str]:  # type: ignore[no-untyped-def]
    args = ["--tls-cert", str(pair.cert), "--tls-key", str(pair.key)]
    return args + (["--tls-client-ca", str(ca.cert)] if ca else [])


def infer_ok(channel: grpc.Channel, model_id: str, metadata=()) -> bool:  # type: ignore[no-untyped-def]
    x = modelgen.sample_input(SPEC, batch=2)
    req = v2.ModelInferRequest(model_name=model_id)
    req.inputs.add(name="INPUT0", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.astype(np.float32).tobytes())
    resp = v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, metadata=metadata, timeout=60)
    out = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(list(resp.outputs[0].shape))
    return bool(np.allclose(out, modelgen.reference_output(SPEC, x), rtol=1e-4, atol=1e-5))


def register(channel: grpc.Channel, model_id: str, path: Path, metadata=()) -> mm.ModelStatusInfo:  # type: ignore[no-untyped-def]
    return mm_grpc.ModelMeshStub(channel).registerModel(mm.RegisterModelRequest(
        modelId=model_id, modelInfo=mm.ModelInfo(type="onnx", path=str(path)), loadNow=True, sync=True),
        metadata=metadata, timeout=60)


def test_tls_router_refuses_plaintext_and_mtls_refuses_clients_without_a_certificate(
        etcd_server, mesh_name, pki: LocalPki) -> None:
    with start_router(etcd_server.endpoint, mesh_name, tls_args(pki.router)) as r:
        assert rpc_code(lambda: cluster_status(grpc.insecure_channel(r.endpoint), timeout=5)) \
            == grpc.StatusCode.UNAVAILABLE
        assert cluster_status(tls_channel(r.endpoint, pki.ca)).registered_models == 0
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from mesh.etcd_server import free_port

    health = f"127.0.0.1:{free_port()}"
    with start_router(etcd_server.endpoint, mesh_name, [*tls_args(pki.router, pki.ca), "--health-listen", health]) as r:
        # Kubelet probes cannot do TLS: the plaintext health port answers them.
        check = health_pb2_grpc.HealthStub(grpc.insecure_channel(health)).Check(health_pb2.HealthCheckRequest(),
                                                                                 timeout=10)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        assert rpc_code(lambda: cluster_status(tls_channel(r.endpoint, pki.ca), timeout=5)) \
            == grpc.StatusCode.UNAVAILABLE
        stranger = ensure_ca(pki.ca.cert.parent / "other-ca")
        foreign = issue(stranger, stranger.cert.parent, "intruder")
        assert rpc_code(lambda: cluster_status(tls_channel(r.endpoint, pki.ca, foreign), timeout=5)) \
            == grpc.StatusCode.UNAVAILABLE
        assert cluster_status(tls_channel(r.endpoint, pki.ca, pki.client)).registered_models == 0


def test_rotated_certificate_is_served_without_a_restart(etcd_server, mesh_name, tmp_path: Path) -> None:
    old_ca = ensure_ca(tmp_path / "old")
    new_ca = ensure_ca(tmp_path / "new")
    served = issue(old_ca, tmp_path, "router")
    with start_router(etcd_server.endpoint, mesh_name, tls_args(served)) as r:
        assert cluster_status(tls_channel(r.endpoint, old_ca)).registered_models == 0
        issue(new_ca, tmp_path, "router")  # same file names: the mounted Secret was rotated
        # A new connection gets the new certificate: trusted by the new CA only.
        assert cluster_status(tls_channel(r.endpoint, new_ca)).registered_models == 0
        assert rpc_code(lambda: cluster_status(tls_channel(r.endpoint, old_ca), timeout=5)) \
            == grpc.StatusCode.UNAVAILABLE
        assert r.process.poll() is None


def test_tokens_guard_management_and_are_re_read_and_never_logged(
        etcd_server, mesh_name, tmp_path: Path, model: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# operators\ns3cret-one\n")
    rt = start_runtime(etcd_server.endpoint, mesh_name, capacity="64Mi", env=ONNX_ONLY)
    try:
        from mesh.etcd_server import free_port
        from tests.runtime_helpers import scrape

        metrics = f"127.0.0.1:{free_port()}"
        with start_router(etcd_server.endpoint, mesh_name,
                          ["--auth-token-file", str(tokens), "--metrics-listen", metrics]) as r:
            ch = grpc.insecure_channel(r.endpoint)
            good = (("authorization", "Bearer s3cret-one"),)
            with pytest.raises(grpc.RpcError) as err:
                cluster_status(ch)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "authorization: Bearer" in err.value.details()
            with pytest.raises(grpc.RpcError) as err:
                register(ch, "m1", model, metadata=(("authorization", "Bearer wrong-token"),))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "wrong-token" not in err.value.details()
            assert register(ch, "m1", model, metadata=good).status == mm.ModelStatusInfo.LOADED
            assert infer_ok(ch, "m1")  # inference is open without --auth-inference

            # The CLI: UNAUTHENTICATED without a token, success with --token or MESHSERVE_TOKEN.
            cli = [sys.executable, "-m", "mesh.cli", "models", "--router", r.endpoint, "--json"]
            env = {k: v for k, v in os.environ.items() if k != "MESHSERVE_TOKEN"}
            out = subprocess.run(cli, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
            assert out.returncode == 1 and "UNAUTHENTICATED" in out.stderr and "cannot reach" not in out.stderr
            out = subprocess.run([*cli, "--token", "s3cret-one"], cwd=ROOT, env=env, capture_output=True, text=True,
                                 timeout=60)
            assert out.returncode == 0 and '"m1"' in out.stdout, out.stderr
            out = subprocess.run(cli, cwd=ROOT, env={**env, "MESHSERVE_TOKEN": "s3cret-one"}, capture_output=True,
                                 text=True, timeout=60)
            assert out.returncode == 0, out.stderr

            # Rotation: the file is re-read; the old token stops working, the new one works.
            tokens.write_text("s3cret-two\n")
            new = (("authorization", "Bearer s3cret-two"),)
            assert _eventually(lambda: rpc_code(lambda: cluster_status(ch, new)) == grpc.StatusCode.OK)
            assert rpc_code(lambda: cluster_status(ch, good)) == grpc.StatusCode.UNAUTHENTICATED
            log = r.log()
            series = " ".join(scrape(metrics))
        assert "s3cret" not in log and "wrong-token" not in log
        assert "s3cret" not in series and "wrong-token" not in series
    finally:
        rt.kill()


def test_auth_inference_needs_a_token_for_inference_too(etcd_server, mesh_name, tmp_path: Path, model: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("tok\n")
    rt = start_runtime(etcd_server.endpoint, mesh_name, capacity="64Mi", env=ONNX_ONLY)
    try:
        import json
        import urllib.error
        import urllib.request

        from mesh.etcd_server import free_port

        rest = f"127.0.0.1:{free_port()}"
        with start_router(etcd_server.endpoint, mesh_name, ["--auth-token-file", str(tokens), "--auth-inference",
                                                            "--rest-listen", rest]) as r:
            ch = grpc.insecure_channel(r.endpoint)
            md = (("authorization", "Bearer tok"),)
            register(ch, "m1", model, metadata=md)
            assert rpc_code(lambda: infer_ok(ch, "m1")) == grpc.StatusCode.UNAUTHENTICATED
            assert infer_ok(ch, "m1", metadata=md)
            # The REST front door checks the same tokens.
            body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32",
                                           "data": [0.5] * 16}]}).encode()

            def post(headers: dict[str, str]) -> int:
                req = urllib.request.Request(f"http://{rest}/v2/models/m1/infer", data=body, method="POST",
                                             headers={"Content-Type": "application/json", **headers})
                try:
                    with urllib.request.urlopen(req, timeout=30) as resp:
                        return int(resp.status)
                except urllib.error.HTTPError as e:
                    return int(e.code)

            assert post({}) == 401 and post({"Authorization": "Bearer nope"}) == 401
            assert post({"Authorization": "Bearer tok"}) == 200
    finally:
        rt.kill()


def test_runtime_takes_spi_calls_only_from_routers_by_token(etcd_server, mesh_name, tmp_path: Path, model: Path) -> None:
    mesh_token = tmp_path / "mesh-token"
    mesh_token.write_text("router-to-runtime\n")
    rt = start_runtime(etcd_server.endpoint, mesh_name, capacity="64Mi", env=ONNX_ONLY,
                       extra_args=["--spi-token-file", str(mesh_token)])
    try:
        direct = spi_grpc.ModelRuntimeStub(grpc.insecure_channel(rt.endpoint))
        load = spi.LoadModelRequest(modelId="sneaky", modelType="onnx", modelPath=str(model))
        with pytest.raises(grpc.RpcError) as err:
            direct.loadModel(load, timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert rpc_code(lambda: direct.runtimeStatus(spi.RuntimeStatusRequest(), timeout=10)) \
            == grpc.StatusCode.UNAUTHENTICATED
        # A router with the shared token loads there; inference on the runtime stays open.
        with start_router(etcd_server.endpoint, mesh_name, ["--runtime-token-file", str(mesh_token)]) as r:
            ch = grpc.insecure_channel(r.endpoint)
            assert register(ch, "m1", model).status == mm.ModelStatusInfo.LOADED
            assert infer_ok(ch, "m1")
        assert "router-to-runtime" not in rt.log()
    finally:
        rt.kill()


def test_runtime_under_mtls_takes_spi_calls_only_from_router_certificates(
        etcd_server, mesh_name, pki: LocalPki, model: Path) -> None:
    rt = start_runtime(etcd_server.endpoint, mesh_name, capacity="64Mi", env=ONNX_ONLY,
                       extra_args=[*tls_args(pki.runtime, pki.ca), "--spi-client-names", ROUTER_NAME])
    try:
        as_client = tls_channel(rt.endpoint, pki.ca, pki.client)  # a valid certificate, but not a router's
        with pytest.raises(grpc.RpcError) as err:
            spi_grpc.ModelRuntimeStub(as_client).runtimeStatus(spi.RuntimeStatusRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "meshserve-client" in err.value.details()
        ready = v2_grpc.GRPCInferenceServiceStub(as_client).ServerReady(v2.ServerReadyRequest(), timeout=10)
        assert ready.ready  # inference is not the SPI
        assert rpc_code(lambda: spi_grpc.ModelRuntimeStub(tls_channel(rt.endpoint, pki.ca)).runtimeStatus(
            spi.RuntimeStatusRequest(), timeout=5)) == grpc.StatusCode.UNAVAILABLE  # no certificate: no handshake
        router_args = ["--runtime-ca", str(pki.ca.cert), "--runtime-cert", str(pki.router.cert),
                       "--runtime-key", str(pki.router.key)]
        with start_router(etcd_server.endpoint, mesh_name, router_args) as r:
            ch = grpc.insecure_channel(r.endpoint)
            assert register(ch, "m1", model).status == mm.ModelStatusInfo.LOADED
            assert infer_ok(ch, "m1")
    finally:
        rt.kill()


def test_runtime_loads_only_under_its_model_roots(etcd_server, mesh_name, tmp_path: Path, model: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (model.parent / "link.onnx").symlink_to(modelgen.write_onnx_mlp(SPEC, outside / "x.onnx"))
    rt = start_runtime(etcd_server.endpoint, mesh_name, capacity="64Mi", env=ONNX_ONLY,
                       extra_args=["--model-roots", str(model.parent)])
    try:
        stub = spi_grpc.ModelRuntimeStub(grpc.insecure_channel(rt.endpoint))
        for i, path in enumerate(["/etc/passwd", "file:///etc/passwd", str(model.parent / ".." / "elsewhere" / "x.onnx"),
                                  str(model.parent / "link.onnx")]):
            req = spi.LoadModelRequest(modelId=f"bad{i}", modelType="onnx", modelPath=path)
            with pytest.raises(grpc.RpcError) as err:
                stub.loadModel(req, timeout=30)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, (path, err.value)
            assert "outside this runtime's model roots" in err.value.details()
            size = spi.PredictModelSizeRequest(modelId=f"bad{i}", modelType="onnx", modelPath=path)
            assert rpc_code(lambda: stub.predictModelSize(size, timeout=10)) == grpc.StatusCode.PERMISSION_DENIED
        ok = stub.loadModel(spi.LoadModelRequest(modelId="good", modelType="onnx", modelPath=str(model)), timeout=30)
        assert ok.sizeInBytes > 0
        # Through a router: the registration reports the refusal as its load failure.
        with start_router(etcd_server.endpoint, mesh_name) as r:
            st = register(grpc.insecure_channel(r.endpoint), "passwd", Path("/etc/passwd"))
            assert st.status != mm.ModelStatusInfo.LOADED
            assert any("outside this runtime's model roots" in e for e in st.errors), st.errors
        assert rt.running
    finally:
        rt.kill()


def _eventually(cond, timeout_s: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


async def test_etcd_over_tls_with_client_certificates(tmp_path: Path, pki: LocalPki) -> None:
    from mesh.errors import RegistryUnavailable
    from mesh.etcd_server import LocalEtcd
    from mesh.registry.etcd_store import EtcdStore
    from mesh.security.tls import ChannelTls

    server_cert = issue(pki.ca, tmp_path, "etcd")
    with LocalEtcd(tmp_path / "etcd", tls=(str(server_cert.cert), str(server_cert.key), str(pki.ca.cert))) as etcd:
        plain = EtcdStore(etcd.endpoint, timeout_s=2.0)
        with pytest.raises(RegistryUnavailable):
            await plain.start()
        await plain.close()
        no_cert = EtcdStore(etcd.endpoint, timeout_s=2.0, tls=ChannelTls(str(pki.ca.cert)))
        with pytest.raises(RegistryUnavailable):
            await no_cert.start()
        await no_cert.close()
        store = EtcdStore(etcd.endpoint, timeout_s=5.0,
                          tls=ChannelTls(str(pki.ca.cert), str(pki.client.cert), str(pki.client.key)))
        await store.start()
        try:
            rev = await store.put(b"/t/k", b"v")
            got = await store.get(b"/t/k")
            assert got is not None and got.value == b"v" and got.mod_revision == rev
        finally:
            await store.close()


def test_cli_says_cannot_reach_only_when_no_router_answers(etcd_server, mesh_name, tmp_path: Path) -> None:
    from mesh.etcd_server import free_port

    rt = start_runtime(etcd_server.endpoint, mesh_name, capacity="64Mi", env=ONNX_ONLY)
    cli = [sys.executable, "-m", "mesh.cli"]
    try:
        with start_router(etcd_server.endpoint, mesh_name) as r:
            reg = subprocess.run([*cli, "register", "gpu-only", "--type", "onnx", "--path", str(tmp_path / "m.onnx"),
                                  "--label", "require.gpu=h100", "--router", r.endpoint], cwd=ROOT, capture_output=True,
                                 text=True, timeout=60)
            assert reg.returncode == 0, reg.stderr
            # No runtime is labelled gpu=h100: the router answers UNAVAILABLE, and the CLI says so, not "cannot reach".
            out = subprocess.run([*cli, "infer", "gpu-only", "--input", "[[1.0]]", "--router", r.endpoint], cwd=ROOT,
                                 capture_output=True, text=True, timeout=120)
            assert out.returncode == 1 and "UNAVAILABLE" in out.stderr and "cannot reach" not in out.stderr, out.stderr
        nobody = f"127.0.0.1:{free_port()}"
        out = subprocess.run([*cli, "cluster", "--router", nobody], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and f"cannot reach the router at {nobody}" in out.stderr
    finally:
        rt.kill()
