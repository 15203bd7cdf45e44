"""The miss path in the runtime (issue 15): a load that evicts drops its victims in its
own thread, before the newcomer is built, and the victims' copy-key deletes land in
etcd in the same transaction (revision) as the newcomer's LOADED key. Small ONNX
files get ORT's basic graph optimisations (faster session builds), large ones the
full set. Real gRPC, real etcd, real ONNX Runtime."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pbg

from mesh import modelgen
from mesh.etcd_server import LocalEtcd
from mesh.fetcher import LocalFetcher
from mesh.proto.mmesh import model_runtime_pb2 as rpb
from mesh.proto.mmesh import model_runtime_pb2_grpc as rpg
from mesh.registry import records as rec
from mesh.registry.etcd_store import EtcdStore
from mesh.registry.keys import KeySchema
from mesh.runtime.backends import BackendRegistry
from mesh.runtime.backends.base import LoadedModel, Signature, TensorSpec
from mesh.runtime.backends.onnx import OnnxBackend
from mesh.runtime.server import RuntimeServer
from mesh.runtime.settings import RuntimeSettings
from mesh.runtime.tensors import decode_outputs, encode_inputs_raw


class TracedModel:
    platform = "test"
    allocated_bytes = 0
    signature = Signature((TensorSpec("X", "FP32", (-1,)),), (TensorSpec("Y", "FP32", (-1,)),))

    def __init__(self, backend: TracingBackend, model_id: str) -> None:
        self._backend, self.model_id = backend, model_id

    def infer(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        return {"Y": inputs["X"] + 1}

    def unload(self) -> None:
        self._backend.trace.append(("unload", self.model_id, threading.get_ident()))


class TracingBackend:
    """Model type ``trace``: records each load and unload with the thread it ran in."""

    model_type = "trace"

    def __init__(self) -> None:
        self.trace: list[tuple[str, str, int]] = []

    def load(self, model_id: str, path: Path, key: dict[str, Any], device: str) -> LoadedModel:
        self.trace.append(("load", model_id, threading.get_ident()))
        return TracedModel(self, model_id)


async def test_a_load_drops_its_victim_in_its_own_thread_and_writes_both_in_one_transaction(
    etcd_server: LocalEtcd, etcd_store: EtcdStore, mesh_name: str, tmp_path: Path
) -> None:
    model_file = tmp_path / "m.bin"
    model_file.write_bytes(b"x" * 1_000_000)  # charged 1.5 MB + 64 KiB: room for one in 2 MB
    backend = TracingBackend()
    settings = RuntimeSettings(etcd=etcd_server.endpoint, mesh=mesh_name, listen="127.0.0.1:0", capacity=2_000_000,
                               record_interval_s=0.05)
    server = RuntimeServer(settings, LocalFetcher(), backends=BackendRegistry([backend]))
    await server.start()
    keys = KeySchema(mesh_name)
    try:
        async with grpc.aio.insecure_channel(server.endpoint) as ch:
            spi, v2 = rpg.ModelRuntimeStub(ch), pbg.GRPCInferenceServiceStub(ch)
            await spi.loadModel(rpb.LoadModelRequest(modelId="old", modelType="trace", modelPath=str(model_file)))
            start = await etcd_store.revision() + 1
            backend.trace.clear()
            await spi.loadModel(rpb.LoadModelRequest(modelId="new", modelType="trace", modelPath=str(model_file)))

            # The victim left first (its memory is free before the newcomer allocates), in the same thread.
            assert [(op, m) for op, m, _ in backend.trace] == [("unload", "old"), ("load", "new")]
            assert len({t for _, _, t in backend.trace}) == 1
            assert not (await v2.ModelReady(pb.ModelReadyRequest(name="old"))).ready
            req = pb.ModelInferRequest(model_name="new")
            encode_inputs_raw(req, {"X": np.arange(3, dtype=np.float32)})
            np.testing.assert_array_equal(decode_outputs(await v2.ModelInfer(req))["Y"], np.arange(1, 4))

            # loadModel returned once its LOADED key was written: what etcd saw since is final.
            events: list[Any] = []

            async def collect() -> None:
                async for ev in etcd_store.watch(keys.copies, start_revision=start):
                    events.append(ev)
                    if len(events) >= 2:
                        return

            await asyncio.wait_for(collect(), 10)
            by_key = {keys.parse(ev.key).name: ev for ev in events}
            assert by_key["old"].kind == "delete" and by_key["new"].kind == "put"
            assert rec.decode(rec.CopyRecord, by_key["new"].value).state == rec.LOADED
            assert by_key["old"].revision == by_key["new"].revision  # one transaction
    finally:
        await server.stop()


@pytest.mark.parametrize(("threshold", "level"), [
    (1 << 20, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),  # a 70 KB file is small
    (0, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),  # 0 = always the full set
    (1000, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),  # larger than the threshold
])
def test_small_onnx_files_get_basic_graph_optimisation(model_files, threshold: int, level: Any) -> None:
    spec, path = model_files[0]
    model: Any = OnnxBackend(full_optimization_min_bytes=threshold).load("m", path, {}, "cpu")
    assert model._session.get_session_options().graph_optimization_level == level
    x = modelgen.sample_input(spec, batch=2)  # answers match the fully optimised session's
    full: Any = OnnxBackend().load("m", path, {}, "cpu")
    name, out = model.signature.inputs[0].name, model.signature.outputs[0].name
    np.testing.assert_allclose(model.infer({name: x}, ())[out], full.infer({name: x}, ())[out], rtol=1e-5)
