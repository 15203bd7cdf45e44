"""A ``meshserve gateway`` (Envoy) child process, for ``meshserve up``, load tests and tests.

``start`` returns once Envoy's admin ``/ready`` says LIVE: it has its first
clusters and routes from the router (or gave up waiting and serves the
router fallback). ``stats`` reads Envoy's counters from the admin port.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mesh.errors import Unavailable


@dataclass
class GatewayProcess:
    listen: str
    router: str
    admin_port: int
    log_path: Path
    stats_listen: str = ""
    rest_listen: str = ""
    router_rest: str = ""
    concurrency: int = 0
    body_routing: bool = True
    envoy_log_level: str = "warning"
    #: More ``meshserve gateway`` flags (TLS: --tls-cert, --router-ca, ...).
    extra_args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        args = [sys.executable, "-m", "mesh.cli", "gateway", "--listen", self.listen, "--router", self.router,
                "--admin-port", str(self.admin_port), "--node-id", f"gateway-{self.admin_port}"]
        if self.stats_listen:
            args += ["--stats-listen", self.stats_listen]
        if self.rest_listen:
            args += ["--rest-listen", self.rest_listen, "--router-rest", self.router_rest]
        if self.concurrency:
            args += ["--concurrency", str(self.concurrency)]
        if self.envoy_log_level != "warning":
            args += ["--envoy-log-level", self.envoy_log_level]
        if not self.body_routing:
            args.append("--no-body-routing")
        return args + list(self.extra_args)

    def start(self, timeout_s: float = 60.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Unavailable(f"the gateway exited with code {self.proc.returncode} at start; see "
                                  f"{self.log_path}:\n" + self.log_path.read_text(errors="replace")[-2000:])
            if self.admin("/ready") == "LIVE":
                return
            time.sleep(0.05)
        self.kill()
        raise Unavailable(f"the gateway was not ready within {timeout_s:.0f}s; see {self.log_path}")

    def admin(self, path: str, method: str = "GET") -> str:
        """An admin call's body ("" when Envoy is not answering)."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.read().decode().strip()  # type: ignore[no-any-return]
        except (urllib.error.URLError, OSError):
            return ""

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Counters and gauges (``cluster.<name>.upstream_rq_total`` ...) whose name starts with ``prefix``."""
        out: dict[str, int] = {}
        for line in self.admin("/stats?usedonly").splitlines():
            name, _, value = line.partition(": ")
            if name.startswith(prefix) and value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def terminate(self, timeout_s: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
