"""A whole mesh on one machine: etcd, N runtime processes and a router.

Used by ``meshserve up``, the demo and the load tests. Runtimes are real
processes (``python -m mesh.cli runtime``), one per simulated pod; the router
runs in this process, or as its own process (``router_process``: the load tests,
so a client in this process does not share the router's interpreter).
With ``gateway``, Envoy (``meshserve gateway``) takes ``listen`` and the router
moves to a free port behind it, programming Envoy over xDS. Logs go to
``<data-dir>/logs/``.
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
from typing import Any

from mesh.errors import Unavailable
from mesh.etcd_server import LocalEtcd, free_port
from router.server import RouterServer
from router.settings import RouterSettings
from router.xds.process import GatewayProcess

_READY = re.compile(r"runtime (\S+) ready on (\S+)")
_ROUTER_READY = re.compile(r"router ready on (\S+)(?: \(REST on (\S+)\))?")


def _concrete(listen: str) -> str:
    """``listen`` with port 0 replaced by a free port."""
    host, _, port = listen.rpartition(":")
    return f"{host}:{free_port()}" if port == "0" else listen


@dataclass
class RuntimeProcess:
    instance_id: str
    endpoint: str
    metrics_endpoint: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def terminate(self, timeout_s: float = 30.0) -> int:
        return _terminate(self.proc, timeout_s)


@dataclass
class RouterProcess:
    endpoint: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    start_s: float  # spawn to ready: interpreter start plus the full mirror load
    rest_endpoint: str = ""  # "" when it serves no REST

    def terminate(self, timeout_s: float = 30.0) -> int:
        return _terminate(self.proc, timeout_s)


@dataclass
class LocalMesh:
    runtimes: int = 2
    listen: str = "127.0.0.1:8033"
    etcd: str | None = None
    capacity: str | None = None
    data_dir: Path | None = None
    mesh: str = "default"
    metrics_listen: str | None = None
    #: The router's REST HOST:PORT; "" = no REST listener.
    rest_listen: str = ""
    runtime_args: tuple[str, ...] = ()
    #: Extra environment for the runtime processes (e.g. MESHSERVE_EVICTION_POLICY).
    runtime_env: dict[str, str] = field(default_factory=dict)
    #: Folders the runtimes may load local model paths from (their --model-roots);
    #: empty: the data dir, the current folder and the system temp folder.
    model_roots: tuple[str, ...] = ()
    #: Extra router settings (RouterSettings fields: TLS, tokens, runtime CA...).
    router_options: dict[str, Any] = field(default_factory=dict)
    #: (certificate, key, client CA) for the local etcd: TLS with client certificates.
    etcd_tls: tuple[str, str, str] | None = None
    #: CA file clients verify the router with ("" = plaintext router).
    client_ca: str = ""
    router_process: bool = False
    #: Envoy in front (needs the envoy extra: ``gateway_available()``).
    gateway: bool = False
    #: Envoy worker threads (0: one per core).
    gateway_concurrency: int = 0
    #: More ``meshserve gateway`` flags (its TLS).
    gateway_args: tuple[str, ...] = ()
    procs: list[RuntimeProcess] = field(default_factory=list)
    router: RouterServer | None = None
    router_proc: RouterProcess | None = None
    local_etcd: LocalEtcd | None = None
    gateway_proc: GatewayProcess | None = None

    async def start(self) -> None:
        self.data_dir = Path(self.data_dir or tempfile.mkdtemp(prefix="meshserve-"))
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        if self.etcd is None:
            self.local_etcd = LocalEtcd(self.data_dir / "etcd", tls=self.etcd_tls)
            await loop.run_in_executor(None, self.local_etcd.start)
            self.etcd = self.local_etcd.endpoint
        if self.capacity is None and "--device" not in self.runtime_args:
            # Runtimes on one host share its memory: each derived alone would claim all of it.
            self.capacity = str(shared_host_capacity(self.runtimes))
        starts = [loop.run_in_executor(None, self._spawn_runtime, i) for i in range(self.runtimes)]
        self.procs = list(await asyncio.gather(*starts))
        router_listen = f"127.0.0.1:{free_port()}" if self.gateway else self.listen
        if self.gateway:  # Envoy cannot report a port it picked: pick them here
            self.listen = _concrete(self.listen)
            self.rest_listen = _concrete(self.rest_listen) if self.rest_listen else ""
        # With Envoy in front, the router (gRPC and REST) listens on internal ports behind it.
        router_rest = f"127.0.0.1:{free_port()}" if self.gateway and self.rest_listen else self.rest_listen
        if self.router_process:
            # A new router's mirror is loaded (instances included) before it says ready.
            self.router_proc = await loop.run_in_executor(None, self.spawn_router, router_listen, "router",
                                                          self.metrics_listen, 600.0, router_rest)
        else:
            self.router = RouterServer(RouterSettings(
                etcd=self.etcd, mesh=self.mesh, listen=router_listen, metrics_listen=self.metrics_listen,
                rest_listen=router_rest, **self.router_options))
            await self.router.start()
            # Wait until the router's mirror sees every runtime.
            deadline = time.monotonic() + 15
            while len(self.router.mirror.instances) < self.runtimes and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        if self.gateway:
            self.gateway_proc = GatewayProcess(listen=self.listen, router=self.router_endpoint, admin_port=free_port(),
                                               log_path=self.data_dir / "logs" / "gateway.log",
                                               concurrency=self.gateway_concurrency, extra_args=self.gateway_args,
                                               rest_listen=self.rest_listen,
                                               router_rest=self.router_rest_endpoint if self.rest_listen else "")
            await loop.run_in_executor(None, self.gateway_proc.start)

    @property
    def endpoint(self) -> str:
        """The front door: Envoy's listener with ``gateway``, else the router."""
        return self.listen if self.gateway_proc is not None else self.router_endpoint

    @property
    def router_endpoint(self) -> str:
        if self.router_proc is not None:
            return self.router_proc.endpoint
        assert self.router is not None
        return self.router.endpoint

    @property
    def rest_endpoint(self) -> str:
        """The REST front door: Envoy's REST listener with ``gateway``, else the router's ("" when none)."""
        if self.gateway_proc is not None and self.rest_listen:
            return self.rest_listen
        return self.router_rest_endpoint

    @property
    def router_rest_endpoint(self) -> str:
        """The router's own REST HOST:PORT ("" when it serves none)."""
        if self.router_proc is not None:
            return self.router_proc.rest_endpoint
        return self.router.rest_endpoint if self.router is not None else ""

    def spawn_router(self, listen: str, name: str, metrics_listen: str | None = None,
                     timeout_s: float = 600.0, rest_listen: str = "") -> RouterProcess:
        """A ``meshserve router`` process on this mesh; returns once it says ready (blocking)."""
        assert self.data_dir is not None and self.etcd is not None
        log_path = self.data_dir / "logs" / f"{name}.log"
        args = [sys.executable, "-m", "mesh.cli", "router", "--listen", listen, "--etcd", self.etcd,
                "--mesh", self.mesh, "--rest-listen", rest_listen]
        if metrics_listen:
            args += ["--metrics-listen", metrics_listen]
        for k, v in self.router_options.items():
            flag = "--" + k.replace("_", "-")
            args += [flag] if v is True else [] if v is False else [flag, str(v)]
        started = time.monotonic()
        proc = _popen(args, log_path, {})
        m = _wait_ready(proc, log_path, _ROUTER_READY, name, timeout_s)
        return RouterProcess(m.group(1), proc, log_path, time.monotonic() - started, m.group(2) or "")

    def _spawn_runtime(self, i: int) -> RuntimeProcess:
        assert self.data_dir is not None and self.etcd is not None
        log_path = self.data_dir / "logs" / f"runtime-{i}.log"
        metrics = f"127.0.0.1:{free_port()}"
        args = [sys.executable, "-m", "mesh.cli", "runtime", "--listen", "127.0.0.1:0", "--etcd", self.etcd,
                "--mesh", self.mesh, "--instance-id", f"runtime-{i}", "--metrics-listen", metrics,
                "--cache-dir", str(self.data_dir / f"cache-{i}"),
                "--model-roots", ",".join(self.model_roots or (str(self.data_dir), os.getcwd(), tempfile.gettempdir())),
                *self.runtime_args]
        if self.capacity:
            args += ["--capacity", self.capacity]
        proc = _popen(args, log_path, self.runtime_env)
        m = _wait_ready(proc, log_path, _READY, f"runtime-{i}", 60.0)
        return RuntimeProcess(m.group(1), m.group(2), metrics, proc, log_path)

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        if self.gateway_proc is not None:
            await loop.run_in_executor(None, self.gateway_proc.terminate)
            self.gateway_proc = None
        if self.router is not None:
            await self.router.stop()
            self.router = None
        if self.router_proc is not None:
            await loop.run_in_executor(None, self.router_proc.terminate)
            self.router_proc = None
        await asyncio.gather(*(loop.run_in_executor(None, p.terminate) for p in self.procs))
        self.procs = []
        if self.local_etcd is not None:
            await loop.run_in_executor(None, self.local_etcd.stop)


#: Kept back per process (interpreter, libraries, buffers), as a runtime's own reserve.
PROCESS_RESERVE = 2 * 2**30
MIN_SHARED_CAPACITY = 256 * 2**20


def shared_host_capacity(runtimes: int, host_bytes: int | None = None, reserve: int = PROCESS_RESERVE) -> int:
    """Model memory per runtime when ``runtimes`` share this host (or its cgroup limit):
    the host minus one reserve per runtime and one for etcd and the router, divided
    evenly; at least 256 MiB."""
    from mesh.runtime.sizing import host_memory_bytes

    total = host_memory_bytes() if host_bytes is None else host_bytes
    return max(MIN_SHARED_CAPACITY, (total - (runtimes + 1) * reserve) // max(1, runtimes))


def gateway_available() -> str:
    """"" when Envoy can front the mesh, else why not."""
    try:
        import envoy.service.discovery.v3  # noqa: F401  (xds-protos)
    except ImportError:
        return "xds-protos is not installed"
    from router.xds.gateway import find_envoy

    return "" if find_envoy() is not None else "the Envoy binary is not installed"


def _terminate(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def _popen(args: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **env})


def _wait_ready(proc: subprocess.Popen[bytes], log_path: Path, ready: re.Pattern[str], name: str,
                timeout_s: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Unavailable(f"{name} exited with code {proc.returncode} at start; see {log_path}:\n"
                              + log_path.read_text(errors="replace")[-2000:])
        m = ready.search(log_path.read_text(errors="replace"))
        if m:
            return m
        time.sleep(0.05)
    proc.kill()
    raise Unavailable(f"{name} was not ready within {timeout_s:.0f}s; see {log_path}")
