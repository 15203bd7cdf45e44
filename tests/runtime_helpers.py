"""Clients for runtime tests: the SPI stub, registry reads, metrics scraping."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from mesh.proto.mmesh import model_runtime_pb2 as rpb
from mesh.proto.mmesh import model_runtime_pb2_grpc as rpg
from mesh.registry import records as rec
from mesh.registry.etcd_store import EtcdStore
from mesh.registry.keys import KeySchema
from mesh.registry.registry import Registry

T = TypeVar("T")


class Spi:
    """A blocking ModelRuntime client."""

    def __init__(self, endpoint: str) -> None:
        self.channel = grpc.insecure_channel(endpoint)
        self.stub = rpg.ModelRuntimeStub(self.channel)

    def load(self, model_id: str, path: str, model_type: str = "onnx", key: str = "", timeout: float = 60) -> int:
        req = rpb.LoadModelRequest(modelId=model_id, modelType=model_type, modelPath=str(path), modelKey=key)
        return int(self.stub.loadModel(req, timeout=timeout).sizeInBytes)

    def unload(self, model_id: str) -> None:
        self.stub.unloadModel(rpb.UnloadModelRequest(modelId=model_id), timeout=30)

    def size(self, model_id: str) -> int:
        return int(self.stub.modelSize(rpb.ModelSizeRequest(modelId=model_id), timeout=10).sizeInBytes)

    def status(self) -> Any:
        return self.stub.runtimeStatus(rpb.RuntimeStatusRequest(), timeout=30)

    def close(self) -> None:
        self.channel.close()


def rpc_error(fn: Callable[[], Any]) -> grpc.RpcError:
    try:
        fn()
    except grpc.RpcError as e:
        return e
    raise AssertionError("the call succeeded; an error was expected")


def registry_call(etcd: str, mesh: str, fn: Callable[[Registry], Awaitable[T]]) -> T:
    async def run() -> T:
        store = EtcdStore(etcd, timeout_s=5)
        await store.start()
        try:
            return await fn(Registry(store, KeySchema(mesh)))
        finally:
            await store.close()

    return asyncio.run(run())


def copies(etcd: str, mesh: str, model_ids: list[str]) -> dict[str, list[rec.CopyRecord]]:
    async def read(reg: Registry) -> dict[str, list[rec.CopyRecord]]:
        return {m: await reg.list_copies(m) for m in model_ids}

    return registry_call(etcd, mesh, read)


def instance(etcd: str, mesh: str, instance_id: str) -> rec.InstanceRecord | None:
    async def read(reg: Registry) -> rec.InstanceRecord | None:
        got = await reg.get_instance(instance_id)
        return got.record if got else None

    return registry_call(etcd, mesh, read)


def eventually(check: Callable[[], T], timeout_s: float = 10.0, interval_s: float = 0.1) -> T:
    """Retries ``check`` until it returns a truthy value (or the time is up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval_s)


def scrape(metrics_endpoint: str) -> dict[str, float]:
    """Samples of a Prometheus text page: ``name{labels}`` -> value."""
    text = urllib.request.urlopen(f"http://{metrics_endpoint}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
