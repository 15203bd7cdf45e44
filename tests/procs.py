"""Real meshserve processes for tests (runtime today; the router tests use it too).

    from tests.procs import start_runtime

    rt = start_runtime(etcd.endpoint, mesh, capacity="64Mi",
                       extra_args=["--metrics-listen", "127.0.0.1:0"],
                       env={"MESHSERVE_LEASE_TTL_S": "2"})
    rt.endpoint        # "127.0.0.1:PORT" from the ready line
    rt.instance_id     # the id it registered under
    rt.pid
    rt.terminate()     # SIGTERM, wait (bounded); returns the exit code
    rt.kill()          # SIGKILL, wait; returns the exit code
    rt.log()           # everything it wrote to stderr so far (for failure messages)

``start_runtime`` spawns ``sys.executable -m mesh.cli runtime --listen
127.0.0.1:0 --etcd ... --mesh ...`` and waits (bounded by ``ready_timeout_s``)
for its ``runtime <id> ready on <endpoint>`` line; if the process exits or the
wait runs out it is killed and RuntimeError carries its log. A RuntimeProc is
a context manager that kills the process on exit if still running; on Linux the
process also dies with the test process (PR_SET_PDEATHSIG), so none is orphaned.
"""

from __future__ import annotations

import itertools
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
READY = re.compile(r"^runtime (\S+) ready on (\S+)$")
ROUTER_READY = re.compile(r"^router ready on (\S+)(?: \(REST on (\S+)\))?$")
_counter = itertools.count(1)


class RuntimeProc:
    def __init__(self, process: subprocess.Popen[str], endpoint: str, instance_id: str, log_path: Path) -> None:
        self.process = process
        self.endpoint = endpoint
        self.instance_id = instance_id
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then wait; SIGKILL if it has not exited within ``timeout_s``."""
        if self.running:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise RuntimeError(f"runtime {self.instance_id} ignored SIGTERM for {timeout_s}s:\n{self.log()[-4000:]}")
        finally:
            self._close()

    def kill(self) -> int:
        if self.running:
            self.process.kill()
        code = self.process.wait()
        self._close()
        return code

    def _close(self) -> None:
        if self.process.stdout:
            self.process.stdout.close()

    def __enter__(self) -> RuntimeProc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def _die_with_parent() -> None:
    """Linux: the child gets SIGKILL if the test process dies (no orphan runtimes)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start_runtime(
    etcd_endpoint: str,
    mesh: str,
    *,
    capacity: int | str | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    ready_timeout_s: float = 60.0,
    log_dir: str | Path | None = None,
) -> RuntimeProc:
    """Starts ``meshserve runtime`` on a free loopback port; returns once it is ready.

    Call it from a long-lived thread (the test's own): on Linux the runtime is
    killed when its spawning thread exits (PR_SET_PDEATHSIG), so a thread pool
    that finishes would take its runtimes with it.
    """
    log_folder = Path(log_dir) if log_dir else Path(tempfile.gettempdir()) / "meshserve-test-logs"
    log_folder.mkdir(parents=True, exist_ok=True)
    log_path = log_folder / f"runtime-{os.getpid()}-{next(_counter)}.log"
    args = [sys.executable, "-m", "mesh.cli", "runtime", "--listen", "127.0.0.1:0",
            "--etcd", etcd_endpoint, "--mesh", mesh]
    if capacity is not None:
        args += ["--capacity", str(capacity)]
    if "--cache-dir" not in extra_args:
        # Never the user's ~/.cache: each test runtime gets a fresh model cache.
        args += ["--cache-dir", tempfile.mkdtemp(prefix="meshserve-test-cache-")]
    args += list(extra_args)
    process, m = _spawn(args, env, log_path, READY, "runtime", ready_timeout_s)
    return RuntimeProc(process, m.group(2), m.group(1), log_path)


class RouterProc(RuntimeProc):
    """A ``meshserve router`` process; ``endpoint`` is gRPC, ``rest_endpoint`` REST ("" if off)."""

    def __init__(self, process: subprocess.Popen[str], endpoint: str, rest_endpoint: str, log_path: Path) -> None:
        super().__init__(process, endpoint, "router", log_path)
        self.rest_endpoint = rest_endpoint


def start_router(etcd_endpoint: str, mesh: str, *, extra_args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, ready_timeout_s: float = 60.0) -> RouterProc:
    """Starts ``meshserve router --listen 127.0.0.1:0 --rest-listen 127.0.0.1:0`` (override with
    ``extra_args``); returns once it prints its ready line. Same thread rule as start_runtime."""
    log_folder = Path(tempfile.gettempdir()) / "meshserve-test-logs"
    log_folder.mkdir(parents=True, exist_ok=True)
    log_path = log_folder / f"router-{os.getpid()}-{next(_counter)}.log"
    args = [sys.executable, "-m", "mesh.cli", "router", "--listen", "127.0.0.1:0", "--rest-listen", "127.0.0.1:0",
            "--etcd", etcd_endpoint, "--mesh", mesh, *extra_args]
    process, m = _spawn(args, env, log_path, ROUTER_READY, "router", ready_timeout_s)
    return RouterProc(process, m.group(1), m.group(2) or "", log_path)


def _spawn(args: list[str], env: Mapping[str, str] | None, log_path: Path, ready: re.Pattern[str], what: str,
           ready_timeout_s: float) -> tuple[subprocess.Popen[str], re.Match[str]]:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(args, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=log_file,
                                   text=True, start_new_session=True,
                                   preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    assert process.stdout is not None
    deadline = time.monotonic() + ready_timeout_s
    seen: list[str] = []
    with selectors.DefaultSelector() as sel:
        sel.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=min(0.5, max(0.0, deadline - time.monotonic()))):
                if process.poll() is not None:
                    break
                continue
            line = process.stdout.readline()
            if not line:
                break
            seen.append(line)
            m = ready.match(line.strip())
            if m:
                return process, m
    process.kill()
    process.wait()
    log = log_path.read_text(errors="replace")
    raise RuntimeError(
        f"{what} did not become ready within {ready_timeout_s}s (exit code {process.returncode}); "
        f"stdout: {''.join(seen)!r}\nlog {log_path}:\n{log[-4000:]}"
    )
