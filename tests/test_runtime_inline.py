"""Inline inference: a model measured to run in microseconds runs on the event loop, a
slow one always in the pool (so it never holds up the loop). Real runtime in this
process, real gRPC and etcd, a fake backend whose run time the test chooses."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pbg

from mesh.etcd_server import LocalEtcd
from mesh.fetcher import LocalFetcher
from mesh.proto.mmesh import model_runtime_pb2 as rpb
from mesh.proto.mmesh import model_runtime_pb2_grpc as rpg
from mesh.runtime.backends import BackendRegistry
from mesh.runtime.backends.base import LoadedModel, Signature, TensorSpec
from mesh.runtime.server import RuntimeServer
from mesh.runtime.settings import RuntimeSettings
from mesh.runtime.tensors import decode_outputs, encode_inputs_raw
from tests.runtime_helpers import scrape


class TimedModel:
    platform = "test"
    allocated_bytes = 0
    signature = Signature((TensorSpec("X", "FP32", (-1,)),), (TensorSpec("Y", "FP32", (-1,)),))

    def __init__(self, backend: TimedBackend, run_s: float) -> None:
        self._backend = backend
        self._run_s = run_s

    def infer(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        self._backend.threads.add(threading.get_ident())
        if self._run_s:
            time.sleep(self._run_s)  # the model's own run time, not synchronisation
        if self._backend.hold.is_set():
            self._backend.held.set()
            self._backend.release.wait(30)
        return {"Y": inputs["X"] * 2}

    def unload(self) -> None:
        pass


class TimedBackend:
    """Model type ``timed``: a model file holding "slow" runs 5 ms per request, any other ~0."""

    model_type = "timed"

    def __init__(self) -> None:
        self.threads: set[int] = set()
        self.hold = threading.Event()
        self.held = threading.Event()
        self.release = threading.Event()

    def load(self, model_id: str, path: Path, key: dict[str, Any], device: str) -> LoadedModel:
        return TimedModel(self, 0.005 if path.read_text() == "slow" else 0.0)


def _request(model: str, n: int = 4) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model)
    encode_inputs_raw(req, {"X": np.arange(n, dtype=np.float32)})
    return req


def _runs(server: RuntimeServer) -> dict[str, float]:
    page = scrape(server.metrics.endpoint)
    return {w: page.get(f'meshserve_inference_runs_total{{where="{w}"}}', 0.0) for w in ("inline", "pool")}


@pytest.fixture
async def runtime(etcd_server: LocalEtcd, mesh_name: str, tmp_path: Path) -> Any:
    for name, text in (("slow", "slow"), ("fast", "fast")):
        (tmp_path / name).write_text(text)
    backend = TimedBackend()
    settings = RuntimeSettings(etcd=etcd_server.endpoint, mesh=mesh_name, listen="127.0.0.1:0", capacity=10**8,
                               metrics_listen="127.0.0.1:0")
    server = RuntimeServer(settings, LocalFetcher(), backends=BackendRegistry([backend]))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.endpoint) as ch:
            spi = rpg.ModelRuntimeStub(ch)
            for name in ("slow", "fast"):
                await spi.loadModel(rpb.LoadModelRequest(modelId=name, modelType="timed",
                                                         modelPath=str(tmp_path / name)))
            yield server, backend, pbg.GRPCInferenceServiceStub(ch)
    finally:
        await server.stop()


async def test_a_slow_model_never_runs_inline_and_never_holds_up_the_loop(runtime: Any) -> None:
    server, backend, v2 = runtime
    for _ in range(20):
        await v2.ModelInfer(_request("slow"), timeout=30)
    assert _runs(server) == {"inline": 0, "pool": 20}
    assert threading.get_ident() not in backend.threads  # every run was in a pool thread
    # A run that blocks: the runtime's loop still answers (it would hang were the run inline).
    backend.hold.set()
    held = asyncio.ensure_future(v2.ModelInfer(_request("slow"), timeout=60))
    assert await asyncio.get_running_loop().run_in_executor(None, backend.held.wait, 30)
    assert (await v2.ServerLive(pb.ServerLiveRequest(), timeout=30)).live
    backend.release.set()
    np.testing.assert_array_equal(decode_outputs(await held)["Y"], np.arange(4, dtype=np.float32) * 2)
    assert _runs(server)["inline"] == 0


async def test_a_tiny_model_runs_inline_once_measured_and_a_big_request_goes_to_the_pool(runtime: Any) -> None:
    server, backend, v2 = runtime
    for _ in range(20):
        resp = await v2.ModelInfer(_request("fast"), timeout=30)
        np.testing.assert_array_equal(decode_outputs(resp)["Y"], np.arange(4, dtype=np.float32) * 2)
    runs = _runs(server)
    assert runs["pool"] >= 1 and runs["inline"] >= 10  # measured in the pool first, then inline
    assert threading.get_ident() in backend.threads
    await v2.ModelInfer(_request("fast", n=100_000), timeout=30)  # far larger than the runs measured
    assert _runs(server)["pool"] == runs["pool"] + 1


async def test_a_reloaded_model_keeps_its_estimate_and_a_new_source_starts_in_the_pool(
        runtime: Any, tmp_path: Path) -> None:
    server, backend, v2 = runtime
    async with grpc.aio.insecure_channel(server.endpoint) as ch:
        spi = rpg.ModelRuntimeStub(ch)

        async def reload(name: str, path: Path) -> None:
            await spi.unloadModel(rpb.UnloadModelRequest(modelId=name))
            await spi.loadModel(rpb.LoadModelRequest(modelId=name, modelType="timed", modelPath=str(path)))

        for _ in range(5):
            await v2.ModelInfer(_request("fast"), timeout=30)
            await v2.ModelInfer(_request("slow"), timeout=30)
        # Evicted and loaded again from the same source (model churn): the first request
        # after the reload runs where the old copy's runs said — fast inline, slow in the pool.
        await reload("fast", tmp_path / "fast")
        await reload("slow", tmp_path / "slow")
        before = _runs(server)
        await v2.ModelInfer(_request("fast"), timeout=30)
        assert _runs(server) == {"inline": before["inline"] + 1, "pool": before["pool"]}
        await v2.ModelInfer(_request("slow"), timeout=30)
        assert _runs(server) == {"inline": before["inline"] + 1, "pool": before["pool"] + 1}
        # The same id from another source (a new version): measured in the pool first again.
        (tmp_path / "fast-v2").write_text("fast")
        await reload("fast", tmp_path / "fast-v2")
        await v2.ModelInfer(_request("fast"), timeout=30)
        assert _runs(server) == {"inline": before["inline"] + 1, "pool": before["pool"] + 2}
