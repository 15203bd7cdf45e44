"""vmodels: force, expectedTargetModelId compare-and-set, owner, TRANSITION_FAILED, resume."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from mesh.proto.mmesh import model_mesh_pb2 as mm
from tests.router_support import MiniMesh, rpc_error, until
from tests.router_support import mini  # noqa: F401 - the fixture

VS = mm.VModelStatusInfo
VMODEL = (("mm-vmodel-id", "prod"),)


async def _vstatus(client, vid: str = "prod", owner: str = "") -> mm.VModelStatusInfo:
    return await client.mesh.getVModelStatus(mm.GetVModelStatusRequest(vModelId=vid, owner=owner))


async def _on_v1(client, **kw) -> None:
    await client.register("v1")
    await client.register("v2")
    await client.mesh.setVModel(mm.SetVModelRequest(vModelId="prod", targetModelId="v1", sync=True, **kw))
    assert (await client.infer("prod", metadata=VMODEL)).model_name == "v1"


async def test_force_switches_at_once_without_waiting_for_the_load(mini: MiniMesh) -> None:
    rts = await mini.runtimes(2, capacity_models=3)
    router, client = await mini.router()
    await _on_v1(client)
    for rt in rts:
        rt.load_gate = asyncio.Event()  # v2 cannot finish loading
    st = await client.mesh.setVModel(mm.SetVModelRequest(vModelId="prod", targetModelId="v2", force=True))
    assert st.status == VS.DEFINED and st.activeModelId == "v2" and st.targetModelId == "v2"
    assert not any("v2" in rt.loaded for rt in rts)


async def test_expected_target_model_id_is_a_compare_and_set(mini: MiniMesh) -> None:
    await mini.runtimes(2, capacity_models=3)
    router, client = await mini.router()
    await _on_v1(client)
    err = await rpc_error(client.mesh.setVModel(mm.SetVModelRequest(
        vModelId="prod", targetModelId="v2", expectedTargetModelId="v0", sync=True)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "'v1'" in err.details() and "'v0'" in err.details()
    assert (await _vstatus(client)).targetModelId == "v1"  # nothing changed
    st = await client.mesh.setVModel(mm.SetVModelRequest(
        vModelId="prod", targetModelId="v2", expectedTargetModelId="v1", sync=True))
    assert st.activeModelId == "v2" and st.status == VS.DEFINED
    err = await rpc_error(client.mesh.setVModel(mm.SetVModelRequest(
        vModelId="new", targetModelId="v2", expectedTargetModelId="v1")))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "does not exist" in err.details()


async def test_owner_must_match(mini: MiniMesh) -> None:
    await mini.runtimes(2, capacity_models=3)
    router, client = await mini.router()
    await _on_v1(client, owner="team-a")
    for call in (
        client.mesh.setVModel(mm.SetVModelRequest(vModelId="prod", targetModelId="v2", owner="team-b")),
        client.mesh.setVModel(mm.SetVModelRequest(vModelId="prod", targetModelId="v2")),
        client.mesh.deleteVModel(mm.DeleteVModelRequest(vModelId="prod", owner="team-b")),
        client.mesh.getVModelStatus(mm.GetVModelStatusRequest(vModelId="prod", owner="team-b")),
    ):
        err = await rpc_error(call)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "'team-a'" in err.details()
    st = await _vstatus(client, owner="team-a")
    assert st.activeModelId == "v1" and st.owner == "team-a"
    await client.mesh.deleteVModel(mm.DeleteVModelRequest(vModelId="prod", owner="team-a"))
    assert (await _vstatus(client)).status == VS.NOT_FOUND


async def test_target_that_cannot_load_is_transition_failed_and_old_model_serves(mini: MiniMesh) -> None:
    rts = await mini.runtimes(2, capacity_models=3)
    router, client = await mini.router()
    await _on_v1(client)
    for rt in rts:
        rt.fail_models["v2"] = "model file is corrupt: bad magic"
    await client.mesh.setVModel(mm.SetVModelRequest(vModelId="prod", targetModelId="v2"))

    async def failed() -> bool:
        return (await _vstatus(client)).status == VS.TRANSITION_FAILED

    await until(failed, "TRANSITION_FAILED")
    st = await _vstatus(client)
    assert st.activeModelId == "v1" and st.targetModelId == "v2"
    assert any("corrupt" in e for e in st.targetModelStatus.errors)
    assert (await client.infer("prod", metadata=VMODEL)).model_name == "v1"


async def test_restarted_router_resumes_an_unfinished_transition(mini: MiniMesh) -> None:
    rts = await mini.runtimes(2, capacity_models=3)
    first, client = await mini.router()
    await _on_v1(client)
    gate = asyncio.Event()
    for rt in rts:
        rt.load_gate = gate
    st = await client.mesh.setVModel(mm.SetVModelRequest(vModelId="prod", targetModelId="v2"))
    assert st.status == VS.TRANSITIONING
    await until(lambda: sum(rt.loads.get("v2", 0) for rt in rts) == 1, "the transition's load to start")
    await mini.forget_router(first)  # the router goes away mid-transition
    assert mini.registry is not None
    left = await mini.registry.get_vmodel("prod")
    assert left is not None and left.record.status == "TRANSITIONING" and left.record.active_model == "v1"
    gate.set()
    second, client = await mini.router()

    async def switched() -> bool:
        return (await _vstatus(client)).status == VS.DEFINED

    await until(switched, "the new router to finish the transition")
    st = await _vstatus(client)
    assert st.activeModelId == "v2"
    assert (await client.infer("prod", metadata=VMODEL)).model_name == "v2"
