"""A small mesh for router tests: real etcd, in-process routers, fake runtimes (real SPI).

    async with MiniMesh(etcd_server, mesh_name) as m:
        a, b = await m.runtimes(2, capacity_models=3)
        router, client = await m.router(max_attempts=2)

Everything started is stopped on exit. ``until`` waits for a condition with a
generous bound instead of sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import pytest

from mesh.clock import Clock
from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.proto.mmesh import model_runtime_pb2 as spi
from mesh.proto.mmesh import model_runtime_pb2_grpc as spi_grpc
from mesh.registry.etcd_store import EtcdStore
from mesh.registry.keys import KeySchema
from mesh.registry.registry import Registry
from router.server import RouterServer
from tests.fake_runtime import FakeRuntime
from tests.test_router import Client, router_settings

T = TypeVar("T")
MS = mm.ModelStatusInfo


async def until(check: Callable[[], Any], what: str, timeout_s: float = 20.0) -> Any:
    """Polls ``check`` (sync or async) until truthy; fails naming ``what`` after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


def sample(router: RouterServer, name: str, **labels: str) -> float:
    return router.metrics.registry.get_sample_value(name, labels or None) or 0.0


class MiniMesh:
    def __init__(self, etcd_server: Any, mesh_name: str) -> None:
        self.etcd_server = etcd_server
        self.mesh_name = mesh_name
        self._fakes: list[FakeRuntime] = []
        self._routers: list[tuple[RouterServer, Client]] = []
        self._store: EtcdStore | None = None
        self.registry: Registry | None = None

    async def __aenter__(self) -> "MiniMesh":
        self._store = EtcdStore(self.etcd_server.endpoint)
        await self._store.start()
        self.registry = Registry(self._store, KeySchema(self.mesh_name))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for server, client in reversed(self._routers):
            await client.channel.close()
            await server.stop(0)
        for rt in self._fakes:
            for gate in (rt.load_gate, rt.infer_gate):
                if gate is not None:
                    gate.set()
            await rt.stop()
        if self._store is not None:
            await self._store.close()

    @property
    def fakes(self) -> list[FakeRuntime]:
        """Every fake runtime started so far."""
        return list(self._fakes)

    async def runtimes(self, n: int, *, first: int | None = None, **kw: Any) -> list[FakeRuntime]:
        assert self.registry is not None
        start = len(self._fakes) if first is None else first
        made = [FakeRuntime(self.registry, f"rt-{start + i}", **kw) for i in range(n)]
        for rt in made:
            await rt.start()
            self._fakes.append(rt)
        return made

    async def router(self, *, clock: Clock | None = None, **settings: Any) -> tuple[RouterServer, Client]:
        server = RouterServer(router_settings(self.etcd_server, self.mesh_name, **settings), clock=clock)
        await server.start()
        for rt in self._fakes:  # the new router sees every runtime started so far
            await until(lambda: rt.instance_id in server.mirror.instances, f"router to see {rt.instance_id}")
        client = Client(server.endpoint)
        self._routers.append((server, client))
        return server, client

    async def forget_router(self, server: RouterServer) -> None:
        """Stops one router (as a crash or rollout would), keeping the others."""
        for i, (s, c) in enumerate(self._routers):
            if s is server:
                await c.channel.close()
                await s.stop(0)
                del self._routers[i]
                return


@pytest.fixture
async def mini(etcd_server: Any, mesh_name: str) -> Any:
    """A MiniMesh for one test (import it into a test module to use it)."""
    async with MiniMesh(etcd_server, mesh_name) as m:
        yield m


async def first_copy(client: Client, rts: list[FakeRuntime], model_id: str) -> tuple[FakeRuntime, FakeRuntime]:
    """Registers and loads ``model_id`` with one request: (the runtime holding it, another)."""
    await client.register(model_id)
    served = (await client.infer(model_id)).id
    holder = next(rt for rt in rts if rt.instance_id == served)
    return holder, next(rt for rt in rts if rt is not holder)


async def two_copies(router: RouterServer, client: Client, model_id: str) -> None:
    """Registers ``model_id`` with min copies 2 and runs the scaler: a copy on two runtimes."""
    from mesh.proto.meshserve.v1 import admin_pb2 as adm

    await client.register(model_id)
    await client.admin.SetModelConfig(adm.SetModelConfigRequest(model_id=model_id, min_copies=2))
    await router.scaler.tick()
    await until(lambda: len(router.table.loaded_on(model_id)) == 2, f"two loaded copies of {model_id}")


async def spi_load(rt: FakeRuntime, model_id: str) -> None:
    """Loads a model on a runtime directly over the SPI (no router): fills it up."""
    async with grpc.aio.insecure_channel(rt.endpoint) as ch:
        await spi_grpc.ModelRuntimeStub(ch).loadModel(
            spi.LoadModelRequest(modelId=model_id, modelType="onnx", modelPath="/x"), timeout=10)


async def status(client: Client, model_id: str) -> mm.ModelStatusInfo:
    return await client.mesh.getModelStatus(mm.GetStatusRequest(modelId=model_id))


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    try:
        await call
    except grpc.aio.AioRpcError as e:
        return e
    raise AssertionError("the call succeeded; an error was expected")
