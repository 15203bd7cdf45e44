"""etcd outages and lost leases: runtimes keep their models, the registry and the routers
converge again without reloading anything.

Real etcd (its own, stopped and started), real runtime processes, an in-process router.
"Converged" is load_tests.convergence's: the LOADED copy keys in etcd = the models the
live runtimes serve = the router's mirror, and a registration succeeds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from load_tests.convergence import Convergence, check
from mesh import modelgen
from mesh.etcd_server import LocalEtcd
from mesh.registry.etcd_store import EtcdStore
from mesh.registry.keys import KeySchema
from mesh.registry.registry import Registry
from router.server import RouterServer
from tests.procs import RuntimeProc, start_runtime
from tests.test_e2e import TEN_TINY, Client, start_router, successful_loads

LEASE_TTL_S = 2


def _runtimes(etcd: str, mesh: str, n: int) -> list[RuntimeProc]:
    env = {"MESHSERVE_MODEL_TYPES": "onnx", "MESHSERVE_LEASE_TTL_S": str(LEASE_TTL_S)}
    return [start_runtime(etcd, mesh, capacity=TEN_TINY, env=env,
                          extra_args=["--metrics-listen", "127.0.0.1:0", "--instance-id", f"rt{i}"])
            for i in range(n)]


async def _until(what: str, cond: Callable[[], Awaitable[bool]], timeout_s: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await cond():
        assert loop.time() < deadline, f"{what}: not within {timeout_s}s"
        await asyncio.sleep(0.1)


async def _converged(registry: Registry, client: Client, ids: list[str], probe: str,
                     live: list[RuntimeProc]) -> Convergence:
    last = Convergence()

    async def done() -> bool:
        nonlocal last
        last = await check(registry, client.channel, ids, probe_path=probe,
                           live={p.instance_id: p.endpoint for p in live})
        return last.converged

    try:
        await _until("convergence", done)
    except AssertionError as e:
        raise AssertionError(f"{e}: {last.describe()}") from None
    return last


@dataclass
class _Mesh:
    procs: list[RuntimeProc]
    router: RouterServer
    client: Client
    registry: Registry
    ids: list[str]
    files: list[tuple[modelgen.MlpSpec, Path]]
    #: The converged state with every model loaded once.
    before: Convergence

    async def converged(self, live: list[RuntimeProc]) -> Convergence:
        return await _converged(self.registry, self.client, self.ids, str(self.files[0][1]), live)


@asynccontextmanager
async def _mesh(etcd: LocalEtcd, mesh: str, model_files: list[tuple[modelgen.MlpSpec, Path]],
                runtimes: int) -> AsyncIterator[_Mesh]:
    """Runtimes, an in-process router and 6 models loaded once each."""
    procs = _runtimes(etcd.endpoint, mesh, runtimes)
    router = await start_router(etcd, mesh, runtimes)
    client = Client(router.endpoint)
    store = EtcdStore(etcd.endpoint, timeout_s=2.0, connect_timeout_s=30.0)
    await store.start()
    try:
        files = model_files[:6]
        ids = await client.register_all(files)
        for mid, (spec, _) in zip(ids, files):
            assert (await client.infer(mid, spec))[1]
        registry = Registry(store, KeySchema(mesh))
        before = await _converged(registry, client, ids, str(files[0][1]), procs)
        yield _Mesh(procs, router, client, registry, ids, files, before)
    finally:
        await store.close()
        await client.channel.close()
        await router.stop(0)
        for p in procs:
            if p.running:
                p.kill()


async def test_an_etcd_outage_longer_than_the_lease_loses_no_copy_and_reloads_nothing(
        tmp_path, mesh_name, model_files) -> None:
    etcd = LocalEtcd(tmp_path / "etcd")
    etcd.start()
    try:
        async with _mesh(etcd, mesh_name, model_files, 3) as m:
            victim = next(p for p in m.procs if any(i == p.instance_id for _, i in m.before.etcd))
            live = [p for p in m.procs if p is not victim]
            loads = successful_loads(live, m.router)

            etcd.stop()
            # Past every lease's TTL with no refresh getting through (each runtime says so).
            await _until("leases overdue", lambda: _logged(live, "not refreshed within"))
            victim.kill()  # dies during the outage: its copies must still go
            for mid, (spec, _) in zip(m.ids, m.files):
                if not any(c == mid and i == victim.instance_id for c, i in m.before.etcd):
                    assert (await m.client.infer(mid, spec))[1], f"{mid} not served during the outage"
            etcd.start()

            after = await m.converged(live)
            assert after.etcd == {(c, i) for c, i in m.before.etcd if i != victim.instance_id}
            assert victim.instance_id not in after.etcd_instances | after.router_instances
            assert successful_loads(live, m.router) == loads, "a model was reloaded"
    finally:
        etcd.cleanup()


async def test_a_lost_lease_is_replaced_with_every_copy_in_one_go_and_nothing_reloaded(
        etcd_server, mesh_name, model_files) -> None:
    async with _mesh(etcd_server, mesh_name, model_files, 2) as m:
        loads = successful_loads(m.procs, m.router)
        held = next(p for p in m.procs if any(i == p.instance_id for _, i in m.before.etcd))
        got = await m.registry.get_instance(held.instance_id)
        assert got is not None
        old_lease = got.record.lease_id
        # What etcd does to a runtime partitioned away for longer than its TTL.
        await m.registry.store.revoke_lease(old_lease)

        async def new_lease() -> bool:
            now = await m.registry.get_instance(held.instance_id)
            return now is not None and now.record.lease_id != old_lease

        await _until("re-registered under a new lease", new_lease)
        after = await m.converged(m.procs)
        assert after.etcd == m.before.etcd
        assert successful_loads(m.procs, m.router) == loads, "a model was reloaded"
        assert "re-registered as" in held.log()


async def _logged(procs: list[RuntimeProc], text: str) -> bool:
    return all(text in p.log() for p in procs)
