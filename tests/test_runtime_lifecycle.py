"""Runtime processes whose life is the test: LRU eviction at capacity, cancelled
loads, SIGTERM (drain, deregister, exit 0) and SIGKILL (lease expiry)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from mesh import modelgen
from mesh.etcd_server import LocalEtcd
from mesh.registry import records as rec
from tests.procs import start_runtime
from tests.runtime_helpers import Spi, copies, eventually, instance, rpc_error

DEVICE = os.environ.get("MESHSERVE_TEST_DEVICE", "cpu")
#: Predicted size = file bytes x this; large enough that the prediction (identical
#: for same-shaped models) dominates the noisy resident-memory measurement, so the
#: capacity holds exactly three.
FACTOR = 100


def _tiny(tmp: Path, i: int) -> Path:
    return modelgen.write_onnx_mlp(modelgen.MlpSpec(hidden=124, seed=100 + i), tmp / f"m{i}.onnx")


def _infer(client: tc.InferenceServerClient, model: str) -> None:
    x = np.ones((1, 16), np.float32)
    t = tc.InferInput("INPUT0", [1, 16], "FP32")
    t.set_data_from_numpy(x)
    client.infer(model, [t])


def test_capacity_for_three_keeps_the_three_most_recently_used(
    etcd_server: LocalEtcd, mesh_name: str, tmp_path: Path
) -> None:
    paths = [_tiny(tmp_path, i) for i in range(5)]
    charge = paths[0].stat().st_size * FACTOR
    env = {"MESHSERVE_SIZE_PREDICTION_FACTOR": str(FACTOR), "MESHSERVE_SIZE_OVERHEAD": "0"}
    with start_runtime(etcd_server.endpoint, mesh_name, capacity=int(charge * 3.5), env=env,
                       extra_args=["--device", DEVICE]) as rt:
        spi, client = Spi(rt.endpoint), tc.InferenceServerClient(rt.endpoint)
        ids = [f"lru/m{i}" for i in range(5)]
        for i in range(3):
            assert spi.load(ids[i], paths[i]) == charge
        _infer(client, ids[0])  # m0 is now more recent than m1 and m2
        spi.load(ids[3], paths[3])
        spi.load(ids[4], paths[4])
        loaded = [m for m in ids if client.is_model_ready(m)]
        assert loaded == [ids[0], ids[3], ids[4]], rt.log()[-2000:]
        _infer(client, ids[0])
        with pytest.raises(InferenceServerException) as e:
            _infer(client, ids[1])
        assert e.value.status() == "StatusCode.NOT_FOUND" and "'lru/m1' is not loaded" in e.value.message()

        def copy_states() -> dict[str, list[str]]:
            return {m: [c.state for c in cs] for m, cs in copies(etcd_server.endpoint, mesh_name, ids).items()}

        want = {ids[0]: [rec.LOADED], ids[1]: [], ids[2]: [], ids[3]: [rec.LOADED], ids[4]: [rec.LOADED]}
        assert eventually(lambda: copy_states() == want), copy_states()
        record = eventually(lambda: (r := instance(etcd_server.endpoint, mesh_name, rt.instance_id))
                            and r.model_count == 3 and r)
        assert record and record.used_bytes == 3 * charge

        # Bigger than the whole capacity: refused with the numbers, nothing evicted.
        big = modelgen.write_onnx_mlp(modelgen.MlpSpec(hidden=400, seed=1), tmp_path / "big.onnx")
        err = rpc_error(lambda: spi.load("too-big", big))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "'too-big'" in err.details() and "capacity" in err.details() and str(int(charge * 3.5)) in err.details()
        assert [m for m in ids if client.is_model_ready(m)] == [ids[0], ids[3], ids[4]]
        spi.close()
        assert rt.terminate() == 0


def test_cancelled_load_leaves_nothing_loaded(etcd_server: LocalEtcd, mesh_name: str, tmp_path: Path) -> None:
    path = modelgen.write_onnx_mlp(modelgen.spec_for_bytes(50_000_000, seed=5), tmp_path / "big.onnx")
    with start_runtime(etcd_server.endpoint, mesh_name, capacity="2Gi", extra_args=["--device", DEVICE]) as rt:
        spi = Spi(rt.endpoint)
        err = rpc_error(lambda: spi.load("slow", path, timeout=0.02))
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        spi.unload("slow")  # the SPI's follow-up to a cancelled load
        assert rpc_error(lambda: spi.size("slow")).code() == grpc.StatusCode.NOT_FOUND
        assert not tc.InferenceServerClient(rt.endpoint).is_model_ready("slow")
        assert eventually(lambda: copies(etcd_server.endpoint, mesh_name, ["slow"])["slow"] == [])
        assert spi.load("slow", path) > 50_000_000  # and it loads fine afterwards
        spi.close()
        assert rt.terminate() == 0


def test_sigterm_exits_zero_and_removes_every_key(etcd_server: LocalEtcd, mesh_name: str, tmp_path: Path) -> None:
    path = _tiny(tmp_path, 0)
    with start_runtime(etcd_server.endpoint, mesh_name, capacity="256Mi") as rt:
        spi = Spi(rt.endpoint)
        spi.load("a", path)
        spi.load("b", path)
        spi.close()
        assert instance(etcd_server.endpoint, mesh_name, rt.instance_id) is not None
        assert rt.terminate() == 0, rt.log()[-3000:]
        assert instance(etcd_server.endpoint, mesh_name, rt.instance_id) is None
        assert copies(etcd_server.endpoint, mesh_name, ["a", "b"]) == {"a": [], "b": []}
        assert "stopped" in rt.log()


@pytest.mark.timeout(60)
def test_sigkill_leaves_nothing_once_the_lease_expires(etcd_server: LocalEtcd, mesh_name: str,
                                                       tmp_path: Path) -> None:
    path = _tiny(tmp_path, 0)
    with start_runtime(etcd_server.endpoint, mesh_name, capacity="256Mi",
                       env={"MESHSERVE_LEASE_TTL_S": "2"}) as rt:
        Spi(rt.endpoint).load("k", path)
        assert copies(etcd_server.endpoint, mesh_name, ["k"])["k"][0].state == rec.LOADED
        rt.kill()
        killed = time.monotonic()
        assert instance(etcd_server.endpoint, mesh_name, rt.instance_id) is not None  # the lease still runs
        assert eventually(lambda: instance(etcd_server.endpoint, mesh_name, rt.instance_id) is None, timeout_s=10)
        assert copies(etcd_server.endpoint, mesh_name, ["k"])["k"] == []
        assert time.monotonic() - killed < 8


def test_start_failures_exit_2_with_the_reason(etcd_server: LocalEtcd) -> None:
    import subprocess
    import sys

    from mesh.etcd_server import free_port

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mesh.cli", "runtime", "--capacity", "1Gi", *args],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "MESHSERVE_ETCD_TIMEOUT_S": "1"})

    dead = f"127.0.0.1:{free_port()}"
    got = run("--listen", "127.0.0.1:0", "--etcd", dead)
    assert got.returncode == 2 and f"etcd at {dead} is unreachable" in got.stderr and "Traceback" not in got.stderr
    got = run("--listen", etcd_server.endpoint, "--etcd", etcd_server.endpoint)
    assert got.returncode == 2 and f"cannot listen on {etcd_server.endpoint}" in got.stderr
    got = run("--listen", "127.0.0.1:0", "--etcd", etcd_server.endpoint, "--labels", "oops")
    assert got.returncode == 2 and "invalid label 'oops'" in got.stderr
    assert got.stdout == ""  # never a ready line
