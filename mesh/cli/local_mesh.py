"""A whole mesh on one machine: etcd, N runtime processes and a router.

Used by ``meshserve up``, the demo and the load tests. Runtimes are real
processes (``python -m mesh.cli runtime``), one per simulated pod; the router
runs in this process. Logs go to ``<data-dir>/logs/``.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mesh.errors import Unavailable
from mesh.etcd_server import LocalEtcd
from router.server import RouterServer
from router.settings import RouterSettings

_READY = re.compile(r"runtime (\S+) ready on (\S+)")


@dataclass
class RuntimeProcess:
    instance_id: str
    endpoint: str
    metrics_endpoint: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def terminate(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@dataclass
class LocalMesh:
    runtimes: int = 2
    listen: str = "127.0.0.1:8033"
    etcd: str | None = None
    capacity: str | None = None
    data_dir: Path | None = None
    mesh: str = "default"
    metrics_listen: str | None = None
    runtime_args: tuple[str, ...] = ()
    procs: list[RuntimeProcess] = field(default_factory=list)
    router: RouterServer | None = None
    local_etcd: LocalEtcd | None = None

    async def start(self) -> None:
        self.data_dir = Path(self.data_dir or tempfile.mkdtemp(prefix="meshserve-"))
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        if self.etcd is None:
            self.local_etcd = LocalEtcd(self.data_dir / "etcd")
            await loop.run_in_executor(None, self.local_etcd.start)
            self.etcd = self.local_etcd.endpoint
        starts = [loop.run_in_executor(None, self._spawn_runtime, i) for i in range(self.runtimes)]
        self.procs = list(await asyncio.gather(*starts))
        self.router = RouterServer(RouterSettings(
            etcd=self.etcd, mesh=self.mesh, listen=self.listen, metrics_listen=self.metrics_listen))
        await self.router.start()
        # Wait until the router's mirror sees every runtime.
        deadline = time.monotonic() + 15
        while len(self.router.mirror.instances) < self.runtimes and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    @property
    def endpoint(self) -> str:
        assert self.router is not None
        return self.router.endpoint

    def _spawn_runtime(self, i: int) -> RuntimeProcess:
        assert self.data_dir is not None and self.etcd is not None
        log_path = self.data_dir / "logs" / f"runtime-{i}.log"
        metrics = f"127.0.0.1:{_free_port()}"
        args = [sys.executable, "-m", "mesh.cli", "runtime", "--listen", "127.0.0.1:0", "--etcd", self.etcd,
                "--mesh", self.mesh, "--instance-id", f"runtime-{i}", "--metrics-listen", metrics,
                "--cache-dir", str(self.data_dir / f"cache-{i}"), *self.runtime_args]
        if self.capacity:
            args += ["--capacity", self.capacity]
        log = open(log_path, "wb")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise Unavailable(f"runtime-{i} exited with code {proc.returncode} at start; see {log_path}:\n"
                                  + log_path.read_text(errors="replace")[-2000:])
            m = _READY.search(log_path.read_text(errors="replace"))
            if m:
                return RuntimeProcess(m.group(1), m.group(2), metrics, proc, log_path)
            time.sleep(0.05)
        proc.kill()
        raise Unavailable(f"runtime-{i} was not ready within 60s; see {log_path}")

    async def stop(self) -> None:
        if self.router is not None:
            await self.router.stop()
            self.router = None
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(None, p.terminate) for p in self.procs))
        self.procs = []
        if self.local_etcd is not None:
            await loop.run_in_executor(None, self.local_etcd.stop)


def _free_port() -> int:
    from mesh.etcd_server import free_port

    return free_port()
