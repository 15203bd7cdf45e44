"""SIGTERM is honoured after a runtime served a request and then sat idle.

Regression: the instance-record loop waited with ``asyncio.wait_for``, which on
Python 3.11 could stall in "cancelling", so shutdown hung until SIGKILL.
"""

from __future__ import annotations

import time

import tritonclient.grpc as tc

from mesh import modelgen
from mesh.etcd_server import LocalEtcd
from tests.procs import start_runtime
from tests.runtime_helpers import Spi


def test_sigterm_after_idle_exits_promptly(etcd_server: LocalEtcd, mesh_name: str, model_files) -> None:
    spec, path = model_files[0]
    rt = start_runtime(etcd_server.endpoint, mesh_name, capacity="64Mi", env={"MESHSERVE_MODEL_TYPES": "onnx"})
    spi = Spi(rt.endpoint)
    spi.load("idle-model", str(path))
    spi.close()
    client = tc.InferenceServerClient(rt.endpoint)
    x = modelgen.sample_input(spec, batch=1)
    inp = tc.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    client.infer("idle-model", [inp])
    client.close()
    time.sleep(6)  # past a record refresh and a lease keep-alive
    started = time.monotonic()
    assert rt.terminate(timeout_s=15) == 0
    assert time.monotonic() - started < 10
