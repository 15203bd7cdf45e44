"""LOADING_FAILED ends when the failures expire (TTL, also overridden live) or on re-registration.

The router gets an injected clock, so the 900 s failure TTL passes in a step,
not in real time.
"""

from __future__ import annotations

import grpc
import pytest

from mesh.clock import FakeClock
from mesh.proto.meshserve.v1 import admin_pb2 as adm
from mesh.proto.mmesh import model_mesh_pb2 as mm
from tests.router_support import MS, MiniMesh, rpc_error, status
from tests.router_support import mini  # noqa: F401 - the fixture


async def _fail_until_loading_failed(mini: MiniMesh, client, model_id: str) -> None:
    for rt in mini.fakes:
        rt.fail_models[model_id] = "model file is corrupt: bad magic"
    await client.register(model_id)
    while (await status(client, model_id)).status != MS.LOADING_FAILED:
        err = await rpc_error(client.infer(model_id))
        assert "corrupt" in err.details()
    err = await rpc_error(client.infer(model_id))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "corrupt" in err.details()
    for rt in mini.fakes:
        rt.fail_models.clear()  # the storage is fixed: only the failure records stand in the way


async def test_loading_failed_clears_once_failures_pass_the_ttl(mini: MiniMesh) -> None:
    await mini.runtimes(2, capacity_models=3)
    clock = FakeClock()
    router, client = await mini.router(clock=clock)
    await _fail_until_loading_failed(mini, client, "m")
    clock.advance(899)  # default MESHSERVE_FAILURE_TTL_S is 900
    assert (await status(client, "m")).status == MS.LOADING_FAILED
    assert (await rpc_error(client.infer("m"))).code() == grpc.StatusCode.FAILED_PRECONDITION
    clock.advance(2)
    st = await status(client, "m")
    assert st.status == MS.NOT_LOADED and list(st.errors) == []
    assert (await client.infer("m")).model_name == "m"


async def test_live_failure_ttl_override_clears_loading_failed(mini: MiniMesh) -> None:
    await mini.runtimes(2, capacity_models=3)
    clock = FakeClock()
    router, client = await mini.router(clock=clock)
    await _fail_until_loading_failed(mini, client, "m")
    clock.advance(61)
    assert (await status(client, "m")).status == MS.LOADING_FAILED  # 900 s still applies
    await client.admin.SetPolicy(adm.SetPolicyRequest(document='{"router": {"failure_ttl_s": 60}}'))
    assert (await status(client, "m")).status == MS.NOT_LOADED
    assert (await client.infer("m")).model_name == "m"


async def test_reregistering_clears_loading_failed(mini: MiniMesh) -> None:
    await mini.runtimes(2, capacity_models=3)
    router, client = await mini.router()
    await _fail_until_loading_failed(mini, client, "m")
    await client.mesh.unregisterModel(mm.UnregisterModelRequest(modelId="m"))
    await client.register("m")
    st = await status(client, "m")
    assert st.status == MS.NOT_LOADED and list(st.errors) == []
    assert (await client.infer("m")).model_name == "m"
