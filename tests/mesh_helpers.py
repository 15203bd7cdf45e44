"""A small real mesh for tests: runtime processes and an in-process router on one etcd."""

from __future__ import annotations

import asyncio
from typing import Any

from router.server import RouterServer
from router.settings import RouterSettings
from tests.procs import RuntimeProc, start_runtime


def onnx_runtimes(etcd: str, mesh: str, n: int, capacity: int) -> list[RuntimeProc]:
    """``n`` ONNX-only runtimes (rt0, rt1...) with metrics, on a short lease. Call from the test's thread."""
    env = {"MESHSERVE_MODEL_TYPES": "onnx", "MESHSERVE_LEASE_TTL_S": "3"}
    return [start_runtime(etcd, mesh, capacity=capacity, env=env,
                          extra_args=["--metrics-listen", "127.0.0.1:0", "--instance-id", f"rt{i}"])
            for i in range(n)]


async def started_router(etcd: str, mesh: str, expect: int, **settings: Any) -> RouterServer:
    """An in-process router with metrics on free ports, once its mirror sees ``expect`` runtimes."""
    r = RouterServer(RouterSettings(etcd=etcd, mesh=mesh, listen="127.0.0.1:0", metrics_listen="127.0.0.1:0",
                                    scale_interval_s=3600, **settings))
    await r.start()
    for _ in range(400):
        if len(r.mirror.instances) >= expect:
            return r
        await asyncio.sleep(0.05)
    await r.stop(0)
    raise AssertionError(f"the router saw {len(r.mirror.instances)} of {expect} runtimes after 20 s")
