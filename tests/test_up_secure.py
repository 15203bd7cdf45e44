"""`meshserve up --tls`: one flag to a mesh with TLS everywhere (router, runtimes, etcd),
driven by the real CLI; and `up`'s memory split among its runtimes."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from mesh import modelgen
from mesh.cli.local_mesh import shared_host_capacity
from mesh.etcd_server import free_port
from mesh.settings import parse_bytes
from tests.procs import ROOT, _die_with_parent
from tests.security_support import cluster_status, rpc_code, tls_channel

GiB = 2**30


def test_runtimes_share_the_host_memory() -> None:
    # The case: 2 runtimes on 24 GiB each took 21.5 GiB; now they split it.
    each = shared_host_capacity(2, host_bytes=24 * GiB)
    assert 2 * each + 3 * 2 * GiB <= 24 * GiB and each == 9 * GiB
    assert shared_host_capacity(8, host_bytes=8 * GiB) == 256 * 2**20  # tiny hosts get a floor, not zero


def _wait_ready(proc: subprocess.Popen[str], log: Path, timeout_s: float = 120) -> str:
    """Everything ``up`` printed up to its ``ready:`` line (read line by line: no select on a buffered pipe)."""
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout_s
    for line in proc.stdout:  # the line ending the loop always comes: ready, or EOF when up exits
        seen += line
        if line.startswith("ready: try") or time.monotonic() > deadline:
            return seen
    raise AssertionError(f"up exited ({proc.wait()}) before it was ready:\n{seen}\n{log.read_text()[-3000:]}")


def test_up_tls_serves_tls_everywhere_and_the_cli_connects_with_the_ca(tmp_path: Path) -> None:
    data = tmp_path / "mesh"
    model = modelgen.write_onnx_mlp(modelgen.spec_for_bytes(20_000, seed=1), tmp_path / "m.onnx")
    log = tmp_path / "up.log"
    with open(log, "w") as err:
        up = subprocess.Popen([sys.executable, "-m", "mesh.cli", "up", "--tls", "--runtimes", "1", "--listen",
                               "127.0.0.1:0", "--data-dir", str(data), "--capacity", "64Mi",
                               "--rest-listen", f"127.0.0.1:{free_port()}"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
                              start_new_session=True, preexec_fn=_die_with_parent)
    try:
        out = _wait_ready(up, log)
        # Envoy in front when it is installed (TLS on its listeners, to the router and the runtimes).
        from mesh.cli.local_mesh import gateway_available

        front = "Envoy" if not gateway_available() else "router alone"
        m = re.search(rf"{front} on (\S+) with TLS", out)
        assert m, out
        endpoint = m.group(1)
        assert re.search(r"REST \(KServe V1/V2\) on https://", out), out
        ca = data / "pki" / "ca.pem"
        assert f"--tls-ca {ca}" in out
        assert "model memory per runtime: 0.06 GiB" in out
        assert rpc_code(lambda: cluster_status(grpc.insecure_channel(endpoint), timeout=5)) == grpc.StatusCode.UNAVAILABLE
        cli = [sys.executable, "-m", "mesh.cli"]
        conn = ["--router", endpoint, "--tls-ca", str(ca)]
        reg = subprocess.run([*cli, "register", "m1", "--type", "onnx", "--path", str(model), "--sync", *conn, "--json"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert reg.returncode == 0 and json.loads(reg.stdout)["status"] == "LOADED", reg.stderr + reg.stdout
        inf = subprocess.run([*cli, "infer", "m1", "--input", json.dumps([[0.5] * 16]), *conn, "--json"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert inf.returncode == 0 and len(json.loads(inf.stdout)["outputs"]["OUTPUT0"][0]) == 4, inf.stderr
        # Without the CA the CLI cannot reach it, and says what to add.
        bare = subprocess.run([*cli, "cluster", "--router", endpoint], cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
        assert bare.returncode == 2 and "cannot reach" in bare.stderr and "--tls-ca" in bare.stderr
        status = cluster_status(tls_channel(endpoint, _pair(ca)))
        assert status.instances and all(":" in i.endpoint for i in status.instances)
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
    assert up.returncode == 0


def _pair(ca: Path):  # type: ignore[no-untyped-def]
    from mesh.security.certs import CertPair

    return CertPair(ca, ca.with_name("ca-key.pem"))
