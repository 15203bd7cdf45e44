"""The runtime in this process, with a gated fake backend so a request can be
held in flight: SIGTERM-style drain, eviction sparing busy models, and the
registration's lease-loss recovery. Real gRPC on loopback and real etcd."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pbg

from mesh.clock import SystemClock
from mesh.etcd_server import LocalEtcd
from mesh.fetcher import LocalFetcher
from mesh.proto.mmesh import model_runtime_pb2 as rpb
from mesh.proto.mmesh import model_runtime_pb2_grpc as rpg
from mesh.registry import records as rec
from mesh.registry.etcd_store import EtcdStore
from mesh.registry.keys import KeySchema
from mesh.registry.registry import Registry
from mesh.runtime.backends import BackendRegistry
from mesh.runtime.backends.base import LoadedModel, Signature, TensorSpec
from mesh.runtime.registration import Registration, RuntimeStats
from mesh.runtime.server import RuntimeServer
from mesh.runtime.settings import RuntimeSettings
from mesh.runtime.tensors import decode_outputs, encode_inputs_raw


class GatedModel:
    platform = "test"
    allocated_bytes = 0
    signature = Signature((TensorSpec("X", "FP32", (-1,)),), (TensorSpec("Y", "FP32", (-1,)),))

    def __init__(self, backend: GatedBackend) -> None:
        self._backend = backend

    def infer(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        self._backend.infer_entered.set()
        self._backend.gate.wait(20)
        return {"Y": inputs["X"] * 2}

    def unload(self) -> None:
        self._backend.unloads += 1


class GatedBackend:
    """Model type ``gate``: any file; inference waits until ``gate`` is set, and
    loads until ``load_gate`` is set. Counts loads and unloads."""

    model_type = "gate"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.load_gate = threading.Event()
        self.load_gate.set()
        self.infer_entered = threading.Event()
        self.load_entered = threading.Event()
        self.loads = 0
        self.unloads = 0

    def load(self, model_id: str, path: Path, key: dict[str, Any], device: str) -> LoadedModel:
        self.loads += 1
        self.load_entered.set()
        self.load_gate.wait(20)
        return GatedModel(self)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "m.bin"
    path.write_bytes(b"x" * 1000)
    return path


@pytest.fixture
def backend() -> GatedBackend:
    return GatedBackend()


def _request(model: str) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model)
    encode_inputs_raw(req, {"X": np.arange(4, dtype=np.float32)})
    return req


async def _start(etcd: LocalEtcd, mesh: str, capacity: int, backend: GatedBackend) -> RuntimeServer:
    settings = RuntimeSettings(etcd=etcd.endpoint, mesh=mesh, listen="127.0.0.1:0", capacity=capacity,
                               shutdown_grace_s=20, record_interval_s=0.05)
    server = RuntimeServer(settings, LocalFetcher(), backends=BackendRegistry([backend]))
    await server.start()
    return server


async def _entered(event: threading.Event) -> None:
    assert await asyncio.get_running_loop().run_in_executor(None, event.wait, 20), "the backend was never called"


async def _until(check: Any, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_stop_drains_in_flight_requests_and_refuses_loads(
    etcd_server: LocalEtcd, etcd_store: EtcdStore, mesh_name: str, model_file: Path, backend: GatedBackend
) -> None:
    server = await _start(etcd_server, mesh_name, 10**6, backend)
    registry = Registry(etcd_store, KeySchema(mesh_name))
    async with grpc.aio.insecure_channel(server.endpoint) as ch:
        spi, v2 = rpg.ModelRuntimeStub(ch), pbg.GRPCInferenceServiceStub(ch)
        await spi.loadModel(rpb.LoadModelRequest(modelId="g", modelType="gate", modelPath=str(model_file)))
        in_flight = asyncio.ensure_future(v2.ModelInfer(_request("g"), timeout=30))
        await _entered(backend.infer_entered)  # the request is now waiting on the gate
        stopping = asyncio.ensure_future(server.stop())

        async def marked() -> bool:
            got = await registry.get_instance(server.instance_id)
            return got is not None and got.record.shutting_down

        await _until(marked)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await spi.loadModel(rpb.LoadModelRequest(modelId="h", modelType="gate", modelPath=str(model_file)))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in (e.value.details() or "")
        assert not (await v2.ServerReady(pb.ServerReadyRequest())).ready
        assert not stopping.done()
        backend.gate.set()
        resp = await in_flight
        np.testing.assert_array_equal(decode_outputs(resp)["Y"], np.arange(4, dtype=np.float32) * 2)
        await asyncio.wait_for(stopping, 20)
    assert await registry.get_instance(server.instance_id) is None
    assert await registry.list_copies("g") == []


async def test_eviction_never_takes_a_model_with_requests_in_flight(
    etcd_server: LocalEtcd, mesh_name: str, tmp_path: Path
) -> None:
    model_file = tmp_path / "m.bin"
    # Charged 1.5 MB + 64 KiB (factor 1.5 + overhead), which dwarfs in-process RSS noise: room for one.
    model_file.write_bytes(b"x" * 1_000_000)
    backend = GatedBackend()
    server = await _start(etcd_server, mesh_name, 2_000_000, backend)
    try:
        async with grpc.aio.insecure_channel(server.endpoint) as ch:
            spi, v2 = rpg.ModelRuntimeStub(ch), pbg.GRPCInferenceServiceStub(ch)
            load = rpb.LoadModelRequest(modelType="gate", modelPath=str(model_file))
            load.modelId = "busy"
            assert (await spi.loadModel(load)).sizeInBytes == 1_500_000 + 65536
            in_flight = asyncio.ensure_future(v2.ModelInfer(_request("busy"), timeout=30))
            await _entered(backend.infer_entered)
            load.modelId = "newcomer"
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await spi.loadModel(load)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "in flight" in (e.value.details() or "") and "'newcomer'" in (e.value.details() or "")
            backend.gate.set()
            await in_flight
            await spi.loadModel(load)  # now "busy" is idle and goes
            assert not (await v2.ModelReady(pb.ModelReadyRequest(name="busy"))).ready
            assert (await v2.ModelReady(pb.ModelReadyRequest(name="newcomer"))).ready
    finally:
        await server.stop()


async def test_unload_of_a_cancelled_load_returns_once_its_model_is_dropped(
    etcd_server: LocalEtcd, etcd_store: EtcdStore, mesh_name: str, model_file: Path, backend: GatedBackend
) -> None:
    backend.load_gate.clear()  # the load thread hangs inside the framework
    server = await _start(etcd_server, mesh_name, 10**6, backend)
    registry = Registry(etcd_store, KeySchema(mesh_name))
    try:
        async with grpc.aio.insecure_channel(server.endpoint) as ch:
            spi, v2 = rpg.ModelRuntimeStub(ch), pbg.GRPCInferenceServiceStub(ch)
            load = rpb.LoadModelRequest(modelId="c", modelType="gate", modelPath=str(model_file))
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await spi.loadModel(load, timeout=0.3)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await _entered(backend.load_entered)

            async def loading() -> bool:  # still loading: the caller's cancel does not stop it
                return [c.state for c in await registry.list_copies("c")] == [rec.LOADING]

            await _until(loading)
            unload = asyncio.ensure_future(spi.unloadModel(rpb.UnloadModelRequest(modelId="c")))
            await asyncio.sleep(0.3)
            assert not unload.done()  # waits for the thread, which cannot be interrupted
            backend.load_gate.set()
            await asyncio.wait_for(unload, 10)
            assert backend.loads == 1 and backend.unloads == 1
            assert not (await v2.ModelReady(pb.ModelReadyRequest(name="c"))).ready
            assert await registry.list_copies("c") == []
            assert (await spi.loadModel(load)).sizeInBytes > 0  # and a new load works
            assert backend.loads == 2
    finally:
        await server.stop()


async def test_registration_recovers_from_lease_loss_and_cleans_leftovers(
    etcd_store: EtcdStore, keys: KeySchema
) -> None:
    registry = Registry(etcd_store, keys)
    await registry.put_copy(rec.CopyRecord("old-model", "inst-1", rec.LOADED), lease=0)
    await registry.put_copy(rec.CopyRecord("old-model", "inst-2", rec.LOADED), lease=0)
    reg = Registration(registry, rec.InstanceRecord("inst-1", "127.0.0.1:1"), lambda: RuntimeStats(7, 1, 0, 0),
                       lease_ttl_s=2, clock=SystemClock(), record_interval_s=0.05)
    await reg.start()
    try:
        assert [c.instance_id for c in await registry.list_copies("old-model")] == ["inst-2"]
        reg.loading("m")
        reg.loaded("m", 123)
        assert await reg.flush_copy("m", 5)
        (copy,) = await registry.list_copies("m")
        assert copy.state == rec.LOADED and copy.size_bytes == 123
        first = reg.lease_id
        got = await registry.get_instance("inst-1")
        assert got is not None and got.record.lease_id == first and got.record.used_bytes == 7
        await etcd_store.revoke_lease(first)  # as if etcd expired it during a partition

        async def back() -> bool:
            inst = await registry.get_instance("inst-1")
            return (inst is not None and inst.record.lease_id not in (0, first)
                    and [c.size_bytes for c in await registry.list_copies("m")] == [123])

        await _until(back)
        kv = await etcd_store.get(keys.copy("m", "inst-1"))
        assert kv is not None and kv.lease == reg.lease_id
        reg.removed("m")
        assert await reg.flush_copy("m", 5)
        assert await registry.list_copies("m") == []
    finally:
        await reg.stop()
    assert await registry.get_instance("inst-1") is None
