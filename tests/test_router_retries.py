"""Router retries and copy choice, from a client's point of view.

Real etcd, real in-process routers, fake runtimes speaking the real SPI (and
registering through the real registration code), which are told to answer
UNAVAILABLE, NOT_FOUND "not loaded" or to hold a request, so each README
promise about retries can be seen to hold or to break.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.router_support import MiniMesh, first_copy, rpc_error, sample, spi_load, status, two_copies, until
from tests.router_support import mini  # noqa: F401 - the fixture

UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, "runtime restarting")


async def test_copy_that_vanished_is_retried_and_counted(mini: MiniMesh) -> None:
    rts = await mini.runtimes(2, capacity_models=3)
    router, client = await mini.router()
    holder, _ = await first_copy(client, rts, "m")
    holder.forget("m")  # gone from memory; its LOADED key still in etcd (as just after an eviction)
    resp = await client.infer("m", b"\x02" * 8)
    assert resp.model_name == "m" and resp.raw_output_contents[0] == b"\x02" * 8
    assert holder.infers_by_model["m"] == 2  # the vanished copy was tried, then the request went on
    assert sample(router, "meshserve_request_retries_total", reason="NOT_FOUND") == 1


async def test_unavailable_copy_is_retried_on_a_fresh_load_elsewhere(mini: MiniMesh) -> None:
    rts = await mini.runtimes(2, capacity_models=3)
    router, client = await mini.router()
    sick, healthy = await first_copy(client, rts, "m")
    sick.infer_errors["*"] = UNAVAILABLE
    resp = await client.infer("m")
    assert resp.id == healthy.instance_id
    assert sick.infers_by_model["m"] == 2 and healthy.loads == {"m": 1}
    assert sample(router, "meshserve_request_retries_total", reason="UNAVAILABLE") == 1


@pytest.mark.parametrize("attempts", [1, 3])
async def test_max_attempts_caps_the_tries(mini: MiniMesh, monkeypatch, attempts: int) -> None:
    monkeypatch.setenv("MESHSERVE_MAX_ATTEMPTS", str(attempts))
    rts = await mini.runtimes(4, capacity_models=3)
    for rt in rts:
        rt.infer_errors["*"] = UNAVAILABLE
    router, client = await mini.router()
    assert router.settings.max_attempts == attempts
    await client.register("m")
    err = await rpc_error(client.infer("m"))
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "'m'" in err.details()
    assert sum(rt.infers_by_model.get("m", 0) for rt in rts) == attempts
    # Retries are the attempts after the first: the last failure is not retried.
    assert sample(router, "meshserve_request_retries_total", reason="UNAVAILABLE") == attempts - 1


async def test_deadline_exceeded_after_a_retry_stays_within_the_callers_deadline(mini: MiniMesh) -> None:
    rts = await mini.runtimes(2, capacity_models=3)
    router, client = await mini.router()
    sick, stuck = await first_copy(client, rts, "m")
    sick.infer_errors["*"] = UNAVAILABLE
    stuck.infer_gate = asyncio.Event()  # the retry lands here and never finishes
    caller_timeout = 3.0
    err = await rpc_error(client.infer("m", timeout=caller_timeout))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert stuck.loads == {"m": 1} and len(stuck.infer_deadlines) == 1
    # The retry was sent with what was left of the caller's deadline, not a fresh one
    # (the router's own default is 60 s; gRPC rounds the grpc-timeout header up a little).
    left = stuck.infer_deadlines[0]
    assert left is not None and left < caller_timeout + 0.5
    assert sample(router, "meshserve_request_retries_total", reason="UNAVAILABLE") == 1


async def test_copy_with_fewest_outstanding_requests_wins(mini: MiniMesh) -> None:
    rts = await mini.runtimes(2, capacity_models=3)
    router, client = await mini.router()
    await two_copies(router, client, "m")
    for rt in rts:
        rt.infer_gate = asyncio.Event()
    held = asyncio.create_task(client.infer("m"))
    busy = await until(lambda: next((rt for rt in rts if rt.waiting_infers == 1), None), "the first request to arrive")
    free = next(rt for rt in rts if rt is not busy)
    free.infer_gate = None
    for _ in range(6):  # one outstanding on `busy`, none on `free`: every request goes to `free`
        assert (await client.infer("m")).id == free.instance_id
    assert busy.infer_gate is not None
    busy.infer_gate.set()
    assert (await held).id == busy.instance_id


async def test_load_refused_with_resource_exhausted_goes_to_the_next_runtime(mini: MiniMesh) -> None:
    empty, fuller = await mini.runtimes(2, capacity_models=4)
    for i in range(2):  # `fuller` holds 2 models more: placement tries `empty` first
        await spi_load(fuller, f"pre{i}")
    empty.load_errors["*"] = (grpc.StatusCode.RESOURCE_EXHAUSTED, "not enough memory: 1000 bytes needed")
    router, client = await mini.router()
    await until(lambda: len(router.mirror.copies) == 2, "the preloaded copies in the mirror")
    await client.register("m")
    assert (await client.infer("m")).id == fuller.instance_id
    assert empty.loads == {"m": 1}
    assert sample(router, "meshserve_router_loads_total", outcome="RESOURCE_EXHAUSTED") == 1
    assert list((await status(client, "m")).errors) == []  # not a load failure of the model


async def test_load_on_a_runtime_that_vanished_goes_to_the_next_runtime(mini: MiniMesh) -> None:
    (gone,) = await mini.runtimes(1, capacity_models=4, lease_ttl_s=60)  # its keys outlive the crash
    (fuller,) = await mini.runtimes(1, capacity_models=4)
    for i in range(2):
        await spi_load(fuller, f"pre{i}")
    router, client = await mini.router()
    await until(lambda: len(router.mirror.copies) == 2, "the preloaded copies in the mirror")
    await gone.crash()
    assert gone.instance_id in router.mirror.instances
    await client.register("m")
    assert (await client.infer("m")).id == fuller.instance_id
    assert sample(router, "meshserve_router_loads_total", outcome="UNAVAILABLE") == 1
