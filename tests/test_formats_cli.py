"""The commands a user types: `meshserve up --allow-pickle`, `register --type SKLearn`, `infer`."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from mesh import modelgen_tabular as mt
from mesh.etcd_server import free_port
from tests.procs import ROOT


def _wait_for_line(proc: subprocess.Popen[str], prefix: str, timeout_s: float) -> list[str]:
    """Lines of ``proc``'s stdout up to the one starting with ``prefix`` (read by a
    thread: a buffered reader hides lines from select)."""
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or ()], daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        seen.append(line)
        if line.startswith(prefix):
            return seen
    raise AssertionError(f"no {prefix!r} line from meshserve up: {''.join(seen)}")


def test_up_with_allow_pickle_serves_the_kserve_sklearn_iris_example(etcd_server, tmp_path: Path) -> None:
    iris = mt.write_sklearn_iris(tmp_path / "sklearn-iris" / "model")  # gs://.../model/model.joblib
    router = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "MESHSERVE_MODEL_TYPES": "sklearn", "MESHSERVE_ROUTER": router, "PYTHONUNBUFFERED": "1"}
    up = subprocess.Popen(
        [sys.executable, "-m", "mesh.cli", "up", "--allow-pickle", "--runtimes", "1", "--listen", router,
         "--etcd", etcd_server.endpoint, "--mesh", f"cli-{uuid.uuid4().hex[:8]}", "--data-dir", str(tmp_path / "up")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_for_line(up, "ready:", 120)

        def meshserve(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "mesh.cli", *args], cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=120)

        reg = meshserve("register", "sklearn-iris", "--type", "SKLearn", "--path", str(iris.path), "--sync")
        assert reg.returncode == 0, reg.stdout + reg.stderr
        out = meshserve("infer", "sklearn-iris", "--input", json.dumps(mt.IRIS_ROWS), "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        assert json.loads(out.stdout)["outputs"] == {"predict": [1, 1]}
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
