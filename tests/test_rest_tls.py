"""TLS on the router's REST and metrics ports: real router and runtime processes, real
etcd, a real HTTP client (requests) with the CA and client certificates a user would pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import requests

from mesh import modelgen
from mesh.etcd_server import free_port
from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.security.certs import CertPair, LocalPki, ensure_ca, issue
from tests.procs import start_runtime
from tests.security_support import start_router, tls_channel
from tests.test_security import ONNX_ONLY, SPEC, model, register, tls_args  # noqa: F401 (model: a fixture)

REFUSED = (requests.exceptions.SSLError, requests.exceptions.ConnectionError)


def predict(base: str, model_id: str, ca: Path, client: CertPair | None = None) -> np.ndarray:
    x = modelgen.sample_input(SPEC, batch=2)
    # requests.post opens a new connection each time: every call is a fresh handshake.
    r = requests.post(f"{base}/v1/models/{model_id}:predict", json={"instances": x.tolist()}, verify=str(ca),
                      cert=(str(client.cert), str(client.key)) if client else None, timeout=60)
    assert r.status_code == 200, r.text
    got = np.asarray(r.json()["predictions"], np.float32)
    assert np.allclose(got, modelgen.reference_output(SPEC, x), rtol=1e-4, atol=1e-5)
    return got


def live(base: str, ca: Path, client: CertPair | None = None) -> int:
    r = requests.get(f"{base}/v2/health/live", verify=str(ca), timeout=10,
                     cert=(str(client.cert), str(client.key)) if client else None)
    return r.status_code


def test_rest_serves_tls_refuses_plaintext_and_picks_up_a_rotated_certificate(
        etcd_server, mesh_name, tmp_path: Path, model: Path) -> None:
    old_ca, new_ca = ensure_ca(tmp_path / "old"), ensure_ca(tmp_path / "new")
    served = issue(old_ca, tmp_path, "router")
    rest = f"127.0.0.1:{free_port()}"
    rt = start_runtime(etcd_server.endpoint, mesh_name, capacity="64Mi", env=ONNX_ONLY)
    try:
        with start_router(etcd_server.endpoint, mesh_name, [*tls_args(served), "--rest-listen", rest]) as r:
            base = f"https://{rest}"
            with pytest.raises(REFUSED):
                requests.get(f"http://{rest}/v2/health/live", timeout=10)
            assert live(base, old_ca.cert) == 200
            assert register(tls_channel(r.endpoint, old_ca), "m1", model).status == mm.ModelStatusInfo.LOADED
            predict(base, "m1", old_ca.cert)
            issue(new_ca, tmp_path, "router")  # same file names: the mounted Secret was rotated
            predict(base, "m1", new_ca.cert)
            with pytest.raises(requests.exceptions.SSLError):
                live(base, old_ca.cert)
            assert r.process.poll() is None
    finally:
        rt.kill()


def test_rest_and_metrics_under_mtls_need_a_client_certificate(
        etcd_server, mesh_name, pki: LocalPki, model: Path) -> None:
    rest, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    rt = start_runtime(etcd_server.endpoint, mesh_name, capacity="64Mi", env=ONNX_ONLY)
    try:
        args = [*tls_args(pki.router, pki.ca), "--rest-listen", rest, "--metrics-listen", metrics, "--metrics-tls"]
        with start_router(etcd_server.endpoint, mesh_name, args) as r:
            base, ca = f"https://{rest}", pki.ca.cert
            with pytest.raises(REFUSED):
                live(base, ca)
            stranger = ensure_ca(pki.ca.cert.parent / "other-ca")
            with pytest.raises(REFUSED):
                live(base, ca, issue(stranger, stranger.cert.parent, "intruder"))
            assert register(tls_channel(r.endpoint, pki.ca, pki.client), "m1", model).status == mm.ModelStatusInfo.LOADED
            predict(base, "m1", ca, pki.client)
            # The metrics port: the same certificate and client CA.
            with pytest.raises(REFUSED):
                requests.get(f"http://{metrics}/metrics", timeout=10)
            with pytest.raises(REFUSED):
                requests.get(f"https://{metrics}/metrics", verify=str(ca), timeout=10)
            scraped = requests.get(f"https://{metrics}/metrics", verify=str(ca), timeout=10,
                                   cert=(str(pki.client.cert), str(pki.client.key)))
            assert scraped.status_code == 200 and 'meshserve_requests_total{code="OK",method="Predict"' in scraped.text
    finally:
        rt.kill()
