"""The runtime's limits, as its README promises them: loads at once, a load timeout that
grows with size, the instance record rewritten at most once a second, the capacity
default, typed BF16 refused. Real runtime server in this process, real etcd, real
gRPC; a backend whose loads wait on a gate stands in for a slow framework."""

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

from mesh.errors import InvalidArgument
from mesh.etcd_server import LocalEtcd
from mesh.fetcher import LocalFetcher
from mesh.proto.mmesh import model_runtime_pb2 as rpb
from mesh.proto.mmesh import model_runtime_pb2_grpc as rpg
from mesh.registry.etcd_store import EtcdStore
from mesh.registry.keys import KeySchema
from mesh.registry.registry import Registry
from mesh.runtime.backends import BackendRegistry
from mesh.runtime.backends.base import Signature, TensorSpec
from mesh.runtime.server import RuntimeServer
from mesh.runtime.settings import RuntimeSettings
from mesh.runtime.sizing import host_memory_bytes
from mesh.runtime.tensors import decode_inputs


class _Model:
    platform = "test"
    allocated_bytes = 0
    signature = Signature((TensorSpec("X", "FP32", (-1,)),), (TensorSpec("Y", "FP32", (-1,)),))

    def infer(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        return {"Y": inputs["X"]}

    def unload(self) -> None:
        pass


class HeldBackend:
    """Model type ``held``: loads wait for ``gate`` (at most ``hold_s[model]`` seconds, as a
    framework that is merely slow); counts how many run at once."""

    model_type = "held"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self._lock = threading.Lock()
        self.entered: list[str] = []
        self.running = 0
        self.most_at_once = 0
        self.hold_s: dict[str, float] = {}

    def load(self, model_id: str, path: Path, key: dict[str, Any], device: str) -> _Model:
        with self._lock:
            self.entered.append(model_id)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            self.gate.wait(self.hold_s.get(model_id, 30))
        finally:
            with self._lock:
                self.running -= 1
        return _Model()


async def _until(check: Any, what: str, timeout_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def _runtime(etcd: LocalEtcd, mesh: str, backend: HeldBackend, **settings: Any) -> RuntimeServer:
    values: dict[str, Any] = {"etcd": etcd.endpoint, "mesh": mesh, "listen": "127.0.0.1:0", "capacity": 10**8,
                              "shutdown_grace_s": 1}
    values.update(settings)
    server = RuntimeServer(RuntimeSettings(**values), LocalFetcher(), backends=BackendRegistry([backend]))
    await server.start()
    return server


def _file(tmp_path: Path, name: str, size: int) -> str:
    path = tmp_path / name
    path.write_bytes(b"x" * size)
    return str(path)


def _load(stub: rpg.ModelRuntimeStub, model_id: str, path: str, timeout: float = 60) -> Any:
    return stub.loadModel(rpb.LoadModelRequest(modelId=model_id, modelType="held", modelPath=path), timeout=timeout)


async def test_at_most_max_loading_concurrency_loads_run_at_once(
        etcd_server: LocalEtcd, mesh_name: str, tmp_path: Path) -> None:
    backend = HeldBackend()
    server = await _runtime(etcd_server, mesh_name, backend, max_loading_concurrency=2)
    path = _file(tmp_path, "m.bin", 1000)
    try:
        async with grpc.aio.insecure_channel(server.endpoint) as ch:
            stub = rpg.ModelRuntimeStub(ch)
            loads = [asyncio.ensure_future(_load(stub, f"m{i}", path)) for i in range(5)]
            await _until(lambda: len(backend.entered) == 2, "two loads to start")
            reg = server.metrics.registry
            await _until(lambda: reg.get_sample_value("meshserve_loads_in_progress") == 5, "five loads accepted")
            # Two got a loading slot; three wait for one (the queue-time histogram counts slots given).
            assert reg.get_sample_value("meshserve_load_queue_seconds_count") == 2
            assert len(backend.entered) == 2 and backend.running == 2
            backend.gate.set()
            sizes = await asyncio.gather(*loads)
            assert all(s.sizeInBytes > 0 for s in sizes)
            assert len(backend.entered) == 5 and backend.most_at_once == 2
    finally:
        backend.gate.set()
        await server.stop()


async def test_the_load_timeout_grows_with_the_predicted_size(
        etcd_server: LocalEtcd, mesh_name: str, tmp_path: Path) -> None:
    backend = HeldBackend()
    # 0.2 s + 2000 s per GB of predicted size: ~0.33 s for a 1 KB file (67036 bytes predicted),
    # ~15.3 s for a 5 MB one (7565536 bytes predicted).
    server = await _runtime(etcd_server, mesh_name, backend, load_timeout_base_s=0.2, load_timeout_per_gb_s=2000)
    try:
        async with grpc.aio.insecure_channel(server.endpoint) as ch:
            stub = rpg.ModelRuntimeStub(ch)
            big = asyncio.ensure_future(_load(stub, "big", _file(tmp_path, "big.bin", 5_000_000)))
            await _until(lambda: backend.entered == ["big"], "the big load to start")
            backend.hold_s["small"] = 3.0  # far past its 0.33 s; a thread cannot be interrupted
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await _load(stub, "small", _file(tmp_path, "small.bin", 1000))
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "load took longer than 0.3s (the timeout for a predicted 67036 bytes)" in e.value.details()
            # The big load started before the small one and outlived its timeout: its own is larger.
            assert not big.done()
            backend.gate.set()
            assert (await big).sizeInBytes > 0
    finally:
        backend.gate.set()
        await server.stop()


async def _instance_puts(store: EtcdStore, key: bytes, after_revision: int) -> int:
    """How many times ``key`` was written after ``after_revision`` (replayed from etcd's history)."""
    last = await store.get(key)
    assert last is not None
    puts = 0
    async with asyncio.timeout(10):
        async for ev in store.watch(key, start_revision=after_revision + 1):
            if ev.key == key and ev.kind == "put":
                puts += 1
            if ev.revision >= last.mod_revision:
                return puts
    return puts


async def test_the_instance_record_is_rewritten_at_most_once_a_second(
        etcd_server: LocalEtcd, etcd_store: EtcdStore, mesh_name: str, tmp_path: Path) -> None:
    backend = HeldBackend()
    backend.gate.set()
    server = await _runtime(etcd_server, mesh_name, backend)  # record_interval_s: 1.0 by default
    keys = KeySchema(mesh_name)
    registry = Registry(etcd_store, keys)
    path = _file(tmp_path, "m.bin", 1000)
    try:
        start_rev = await etcd_store.revision()
        started = time.monotonic()
        async with grpc.aio.insecure_channel(server.endpoint) as ch:
            stub = rpg.ModelRuntimeStub(ch)
            for i in range(30):  # 30 loads, each changing used bytes and model count
                await _load(stub, f"m{i}", path)

            async def caught_up() -> bool:
                got = await registry.get_instance(server.instance_id)
                return got is not None and got.record.model_count == 30

            deadline = time.monotonic() + 20
            while not await caught_up():
                assert time.monotonic() < deadline, "the record never showed the 30 models"
                await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        puts = await _instance_puts(etcd_store, keys.instance(server.instance_id), start_rev)
        # Coalesced: far fewer writes than changes, and never more than one per second.
        assert 1 <= puts <= int(elapsed / 1.0) + 1, (puts, elapsed)
    finally:
        await server.stop()


async def test_capacity_defaults_to_host_memory_minus_the_reserve(
        etcd_server: LocalEtcd, etcd_store: EtcdStore, mesh_name: str) -> None:
    for reserve in (2 * 2**30, 3 * 2**30):
        overrides: dict[str, Any] = {"capacity": None}
        if reserve != 2 * 2**30:
            overrides["capacity_reserve"] = reserve
        assert RuntimeSettings(etcd=etcd_server.endpoint, mesh=mesh_name).capacity_reserve == 2 * 2**30
        server = await _runtime(etcd_server, mesh_name, HeldBackend(), **overrides)
        try:
            got = await Registry(etcd_store, KeySchema(mesh_name)).get_instance(server.instance_id)
            assert got is not None and got.record.capacity_bytes == host_memory_bytes() - reserve
            with open("/proc/meminfo") as f:
                total_kb = int(next(line for line in f if line.startswith("MemTotal:")).split()[1])
            assert got.record.capacity_bytes <= total_kb * 1024 - reserve
        finally:
            await server.stop()


def test_typed_bf16_is_refused_naming_the_input_and_the_fix() -> None:
    sig = Signature((TensorSpec("W", "BF16", (2,)),), (TensorSpec("W", "BF16", (2,)),))
    req = pb.ModelInferRequest()
    req.inputs.add(name="W", datatype="BF16", shape=[2]).contents.fp32_contents.extend([1.0, 2.0])
    with pytest.raises(InvalidArgument) as e:
        decode_inputs(req, sig, "m")
    msg = str(e.value)
    assert "'W'" in msg and "BF16 has no typed contents field" in msg and "raw_input_contents" in msg
