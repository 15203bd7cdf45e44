"""Real router processes, sync clients with TLS/token, for the security and fuzz tests."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from mesh.proto.meshserve.v1 import admin_pb2 as adm
from mesh.proto.meshserve.v1 import admin_pb2_grpc as adm_grpc
from mesh.security.certs import CertPair
from tests.procs import ROOT, _die_with_parent

READY = re.compile(r"^router ready on (\S+)(?: \(REST on \S+\))?$")


class RouterProc:
    def __init__(self, process: subprocess.Popen[str], endpoint: str, log_path: Path) -> None:
        self.process = process
        self.endpoint = endpoint
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()

    def __enter__(self) -> RouterProc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_router(etcd: str, mesh: str, extra_args: Sequence[str] = (), env: dict[str, str] | None = None,
                 ready_timeout_s: float = 60.0) -> RouterProc:
    """``meshserve router`` on a free loopback port; returns once it says ready."""
    log_dir = Path(tempfile.gettempdir()) / "meshserve-test-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"router-{os.getpid()}-{time.monotonic_ns()}.log"
    args = [sys.executable, "-m", "mesh.cli", "router", "--listen", "127.0.0.1:0", "--etcd", etcd, "--mesh", mesh,
            *extra_args]
    if "--rest-listen" not in extra_args:  # never the default port: tests run side by side
        from mesh.etcd_server import free_port

        args += ["--rest-listen", f"127.0.0.1:{free_port()}"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    assert proc.stdout is not None
    deadline = time.monotonic() + ready_timeout_s
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=0.5):
                if proc.poll() is not None:
                    break
                continue
            line = proc.stdout.readline()
            if not line:
                break
            m = READY.match(line.strip())
            if m:
                return RouterProc(proc, m.group(1), log_path)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"router not ready (exit {proc.returncode}):\n{log_path.read_text(errors='replace')[-4000:]}")


def tls_channel(endpoint: str, ca: CertPair, client: CertPair | None = None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.cert.read_bytes(),
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.cert.read_bytes() if client else None)
    return grpc.secure_channel(endpoint, creds)


def cluster_status(channel: grpc.Channel, metadata: Sequence[tuple[str, str]] = (), timeout: float = 10) -> adm.ClusterStatus:
    return adm_grpc.MeshAdminStub(channel).GetClusterStatus(adm.GetClusterStatusRequest(), metadata=metadata,
                                                            timeout=timeout)


def rpc_code(fn) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        fn()
    except grpc.RpcError as e:
        return e.code()  # type: ignore[no-any-return, attr-defined]
    return grpc.StatusCode.OK
