"""Where the policy document comes from, and that each part of it really decides.

Cases are chosen so that the document's policy and the default decide differently
(lfu vs lru evict different models; a raising user placement vs rank; live router
tunables vs the settings), so a policy that is read but not applied fails here.
Real etcd, real runtime servers (in process, a backend that needs no framework),
real routers with fake runtimes for placement.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pbg

from mesh.clock import FakeClock
from mesh.etcd_server import LocalEtcd
from mesh.fetcher import LocalFetcher
from mesh.proto.meshserve.v1 import admin_pb2 as adm
from mesh.proto.mmesh import model_runtime_pb2 as rpb
from mesh.proto.mmesh import model_runtime_pb2_grpc as rpg
from mesh.registry import records as rec
from mesh.registry.etcd_store import EtcdStore
from mesh.registry.keys import KeySchema
from mesh.registry.registry import Registry
from mesh.runtime.backends import BackendRegistry
from mesh.runtime.server import RuntimeServer
from mesh.runtime.settings import RuntimeSettings
from mesh.runtime.tensors import encode_inputs_raw
from tests.router_support import MiniMesh, spi_load, status, until
from tests.router_support import mini  # noqa: F401 - the fixture
from tests.test_runtime_inprocess import GatedBackend

MB = 1_000_000


async def _runtime(etcd: LocalEtcd, mesh: str, **settings: Any) -> RuntimeServer:
    backend = GatedBackend()
    backend.gate.set()  # inference answers at once
    # Each 1 MB model is charged 1.5 MB + 64 KiB: room for two, not three.
    values: dict[str, Any] = {"etcd": etcd.endpoint, "mesh": mesh, "listen": "127.0.0.1:0", "capacity": 3_500_000,
                              "shutdown_grace_s": 1}
    values.update(settings)
    server = RuntimeServer(RuntimeSettings(**values), LocalFetcher(), backends=BackendRegistry([backend]))
    await server.start()
    return server


async def evicted_by(server: RuntimeServer, model_file: Path, tag: str) -> str:
    """Loads a (used 3x) then b (used 1x, most recently), then c: which of a/b made room?

    lru evicts a (least recently used), lfu evicts b (least frequently used)."""
    async with grpc.aio.insecure_channel(server.endpoint) as ch:
        spi, v2 = rpg.ModelRuntimeStub(ch), pbg.GRPCInferenceServiceStub(ch)

        async def load(name: str) -> None:
            await spi.loadModel(rpb.LoadModelRequest(modelId=f"{tag}-{name}", modelType="gate",
                                                     modelPath=str(model_file)), timeout=30)

        async def use(name: str, times: int) -> None:
            for _ in range(times):
                req = pb.ModelInferRequest(model_name=f"{tag}-{name}")
                encode_inputs_raw(req, {"X": np.arange(2, dtype=np.float32)})
                await v2.ModelInfer(req, timeout=30)

        await load("a")
        await use("a", 3)
        await load("b")
        await use("b", 1)
        await load("c")
        ready = {n: (await v2.ModelReady(pb.ModelReadyRequest(name=f"{tag}-{n}"))).ready for n in "abc"}
        gone = [n for n, r in ready.items() if not r]
        assert len(gone) == 1 and ready["c"], ready
        for n in "abc":  # leave the runtime empty for the next round
            await spi.unloadModel(rpb.UnloadModelRequest(modelId=f"{tag}-{n}"), timeout=30)
        return gone[0]


async def _applied(server: RuntimeServer, revision: int) -> None:
    reg = server.metrics.registry
    await until(lambda: reg.get_sample_value("meshserve_policy_revision") == revision,
                f"the runtime to run on policy revision {revision}")


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "m.bin"
    path.write_bytes(b"x" * MB)
    return path


async def test_runtime_applies_its_policy_file_and_falls_back_to_it_when_the_key_goes(
        etcd_server: LocalEtcd, etcd_store: EtcdStore, mesh_name: str, tmp_path: Path, model_file: Path) -> None:
    keys = KeySchema(mesh_name)
    plain = await _runtime(etcd_server, mesh_name)
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("eviction: {default: lfu}\n")
    filed = await _runtime(etcd_server, mesh_name, policy_file=str(policy_file))
    try:
        assert await evicted_by(plain, model_file, "p1") == "a"  # the default, lru
        assert await evicted_by(filed, model_file, "f1") == "b"  # the file's lfu
        rev = await Registry(etcd_store, keys).set_policy(rec.PolicyRecord({"eviction": {"default": "lru"}}))
        await _applied(filed, rev)
        assert await evicted_by(filed, model_file, "f2") == "a"  # the key wins over the file
        await etcd_store.delete(keys.policy)
        await _applied(filed, 0)
        assert await evicted_by(filed, model_file, "f3") == "b"  # key gone: the file again
        await _applied(plain, 0)
        assert await evicted_by(plain, model_file, "p2") == "a"  # no file: the defaults again
    finally:
        await plain.stop()
        await filed.stop()


async def test_by_label_eviction_rule_applies_live_to_matching_runtimes_only(
        etcd_server: LocalEtcd, etcd_store: EtcdStore, mesh_name: str, model_file: Path) -> None:
    batch = await _runtime(etcd_server, mesh_name, labels="tier=batch,zone=a")
    online = await _runtime(etcd_server, mesh_name, labels="tier=online")
    try:
        doc = {"eviction": {"default": "lru", "by_label": {"tier=batch": {"policy": "lfu"}}}}
        rev = await Registry(etcd_store, KeySchema(mesh_name)).set_policy(rec.PolicyRecord(doc))
        await _applied(batch, rev)
        await _applied(online, rev)
        assert await evicted_by(batch, model_file, "b") == "b"  # the by_label rule: lfu
        assert await evicted_by(online, model_file, "o") == "a"  # no rule matches: the default lru
    finally:
        await batch.stop()
        await online.stop()


async def test_a_user_placement_that_raises_falls_back_to_rank(mini: MiniMesh, caplog) -> None:
    empty, fuller = await mini.runtimes(2, capacity_models=4)
    for i in range(2):  # rank prefers `empty` (fewer models)
        await spi_load(fuller, f"pre{i}")
    router, client = await mini.router()
    await until(lambda: len(router.mirror.copies) == 2, "the preloaded copies in the mirror")
    await client.admin.SetPolicy(adm.SetPolicyRequest(document='{"placement": "tests.policy_plugins:explode"}'))
    assert not router.policy.is_default_placement()
    caplog.set_level(logging.ERROR, logger="router.policy")
    await client.register("m")
    assert (await client.infer("m")).id == empty.instance_id
    assert "placement policy tests.policy_plugins:explode failed for model m; using rank" in caplog.text
    assert "user placement policy bug" in caplog.text


async def test_set_policy_validate_only_checks_and_stores_nothing(mini: MiniMesh) -> None:
    await mini.runtimes(1)
    router, client = await mini.router()
    stored = await client.admin.SetPolicy(adm.SetPolicyRequest(document='{"eviction": "lru"}'))
    got = await client.admin.SetPolicy(adm.SetPolicyRequest(document="placement: {policy: pack, headroom: 0.2}",
                                                            validate_only=True))
    assert got.revision == 0 and json.loads(got.document)["placement"]["headroom"] == 0.2
    err = None
    try:
        await client.admin.SetPolicy(adm.SetPolicyRequest(document='{"placement": {"policy": "pack", "headroom": 2}}',
                                                          validate_only=True))
    except grpc.aio.AioRpcError as e:
        err = e
    assert err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "placement.headroom" in err.details()
    now = await client.admin.GetPolicy(adm.GetPolicyRequest())
    assert now.revision == stored.revision and json.loads(now.document) == json.loads(stored.document)
    assert router.policy.live.revision == stored.revision and router.policy.live.document.placement.policy == "rank"
    assert mini.registry is not None
    kept = await mini.registry.get_policy()
    assert kept is not None and kept.mod_revision == stored.revision


async def test_scale_up_rpm_and_idle_copy_s_apply_live(mini: MiniMesh) -> None:
    await mini.runtimes(2, capacity_models=3)
    clock = FakeClock()
    router, client = await mini.router(clock=clock)  # settings: scale_up_rpm 2000, idle_copy_s 300
    await client.register("busy")
    for _ in range(30):
        await client.infer("busy")
    clock.advance(1)  # 30 requests in a second: 1800/min, under 2000
    await router.scaler.tick()
    assert len((await status(client, "busy")).modelCopyInfos) == 1
    await client.admin.SetPolicy(adm.SetPolicyRequest(document='{"router": {"scale_up_rpm": 20, "idle_copy_s": 30}}'))
    clock.advance(29)
    for _ in range(15):
        await client.infer("busy")
    await router.scaler.tick()  # 15 requests in 30 s: 30/min > 20/min on one copy: one more
    assert len(router.table.loaded_on("busy")) == 2
    clock.advance(31)  # unused for 31 s: past idle_copy_s 30 (the settings' 300 would keep it)
    await router.scaler.tick()
    await until(lambda: len(router.table.loaded_on("busy")) == 1, "the extra copy to go back")
    assert (await client.infer("busy")).model_name == "busy"
