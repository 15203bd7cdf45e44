"""Live policy changes: a running router switches placement, a running runtime
process switches eviction, both within a second of the etcd write and without a
restart; invalid documents are refused with the field and the reason, and the
old one stays."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from mesh import modelgen
from mesh.etcd_server import LocalEtcd
from mesh.proto.meshserve.v1 import admin_pb2 as adm
from mesh.registry import records as rec
from mesh.registry.registry import Registry
from router.server import RouterServer
from tests.procs import start_runtime
from tests.runtime_helpers import Spi, copies, eventually, instance, registry_call, scrape
from tests.test_router import Client, registry, router_settings, runtimes  # noqa: F401 - fixtures

APPLY_WITHIN_S = 1.0


async def until(check, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


@pytest.fixture
async def router(etcd_server: LocalEtcd, mesh_name: str, runtimes) -> AsyncIterator[RouterServer]:  # noqa: F811
    server = RouterServer(router_settings(etcd_server, mesh_name, metrics_listen="127.0.0.1:0"))
    await server.start()
    yield server
    await server.stop(0)


async def test_router_switches_placement_live_and_refuses_invalid_documents(
        router: RouterServer, registry: Registry) -> None:  # noqa: F811
    client = Client(router.endpoint)
    try:
        for m in ("a", "b", "c", "d"):
            await client.register(m)
        # Default ranking: fewer models first, ties by id.
        assert [(await client.infer(m)).id for m in ("a", "b", "c")] == ["rt-0", "rt-1", "rt-0"]

        # Refused through MeshAdmin with the field and the reason; nothing stored.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.admin.SetPolicy(adm.SetPolicyRequest(document='{"placement": {"policy": "pack", "headroom": 2}}'))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "placement.headroom: Input should be less than 1" in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.admin.SetPolicy(adm.SetPolicyRequest(document="eviction: {default: {policy: ttl, idle_s: -1}}"))
        assert "eviction.default.idle_s" in err.value.details()
        assert (await client.admin.GetPolicy(adm.GetPolicyRequest())).revision == 0

        # Written straight into etcd (as another router's SetPolicy would): this router
        # applies it within a second, and the next load lands on the fullest instance.
        t0 = time.monotonic()
        rev = await registry.set_policy(rec.PolicyRecord({"placement": {"policy": "pack"}}))
        assert await until(lambda: router.policy.live.revision == rev, APPLY_WITHIN_S), "not applied within 1 s"
        applied_s = time.monotonic() - t0
        assert (await client.infer("d")).id == "rt-0"  # rank would pick rt-1 (fewer models)
        got = await client.admin.GetPolicy(adm.GetPolicyRequest())
        assert got.revision == rev and json.loads(got.document)["placement"]["policy"] == "pack"

        # A bad document put into etcd behind the API's back is refused here; pack stays.
        bad = await registry.set_policy(rec.PolicyRecord({"placement": {"policy": "scatter"}}))
        await router.mirror.wait_for(bad)
        assert router.policy.live.revision == rev and router.policy.live.document.placement.policy == "pack"
        samples = await asyncio.to_thread(scrape, f"127.0.0.1:{router.metrics_port}")
        assert samples["meshserve_policy_errors_total"] == 1 and samples["meshserve_policy_revision"] == rev

        # Through the API, with compare-and-set on the revision.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.admin.SetPolicy(adm.SetPolicyRequest(document='{"placement": "spread"}', expected_revision=rev))
        assert err.value.code() == grpc.StatusCode.ABORTED
        out = await client.admin.SetPolicy(adm.SetPolicyRequest(document='{"placement": "spread"}', expected_revision=bad))
        assert router.policy.live.revision == out.revision  # read-your-writes on this router
        print(f"router applied the etcd change in {applied_s * 1000:.0f} ms")
    finally:
        await client.channel.close()


def test_runtime_process_switches_to_ttl_live_and_unloads_an_idle_model(etcd_server: LocalEtcd, tmp_path: Path) -> None:
    mesh = f"t-live-{time.monotonic_ns() % 10**8}"
    model = modelgen.write_onnx_identity(tmp_path / "identity.onnx")
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("eviction: {default: {policy: lfu}}\n")
    with start_runtime(etcd_server.endpoint, mesh, capacity="256Mi",
                       extra_args=["--metrics-listen", "127.0.0.1:0", "--policy-file", str(policy_file)]) as rt:
        spi = Spi(rt.endpoint)
        try:
            spi.load("idle-model", str(model))
            record = instance(etcd_server.endpoint, mesh, rt.instance_id)
            assert record is not None and record.metrics_endpoint
            assert [c.state for c in copies(etcd_server.endpoint, mesh, ["idle-model"])["idle-model"]] == [rec.LOADED]
            # Still loaded after a while: lfu (from the file) never expires anything.
            time.sleep(1.0)
            assert copies(etcd_server.endpoint, mesh, ["idle-model"])["idle-model"]

            doc = {"eviction": {"default": {"policy": "ttl", "idle_s": 1.0, "sweep_s": 0.2}}}
            t0 = time.monotonic()
            rev = registry_call(etcd_server.endpoint, mesh, lambda r: r.set_policy(rec.PolicyRecord(doc)))
            assert eventually(lambda: scrape(record.metrics_endpoint).get("meshserve_policy_revision") == rev,
                              APPLY_WITHIN_S, 0.02), "the runtime did not apply the policy within 1 s"
            applied_s = time.monotonic() - t0
            assert eventually(lambda: not copies(etcd_server.endpoint, mesh, ["idle-model"])["idle-model"], 10)
            after = scrape(record.metrics_endpoint)
            assert after['meshserve_evictions_total{policy="ttl",reason="idle"}'] == 1
            assert after['meshserve_model_unloads_total{reason="expired"}'] == 1
            assert after["meshserve_models_loaded"] == 0 and after["meshserve_age_at_eviction_seconds_count"] == 1

            # A document this runtime cannot apply is refused; ttl stays.
            registry_call(etcd_server.endpoint, mesh, lambda r: r.set_policy(
                rec.PolicyRecord({"eviction": {"default": {"policy": "no_such_module:f"}}})))
            assert eventually(lambda: scrape(record.metrics_endpoint).get("meshserve_policy_errors_total") == 1, 5)
            assert scrape(record.metrics_endpoint)["meshserve_policy_revision"] == rev
            spi.load("again", str(model))
            assert eventually(lambda: not copies(etcd_server.endpoint, mesh, ["again"])["again"], 10)
            print(f"runtime applied the etcd change in {applied_s * 1000:.0f} ms")
        finally:
            spi.close()
        assert rt.terminate() == 0, rt.log()[-3000:]
