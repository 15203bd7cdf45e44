"""scale: 10,000 and 100,000 registered models through ``registerModel``.

Per level: registration rate (bounded in flight, each call waits for the router's mirror,
ModelMesh's read-your-writes), the router process's resident memory, and the time a new
router process takes from spawn to serving with a full mirror of the registry (against the
same for an empty registry: interpreter and imports). Levels are cumulative. No runtimes
are needed (nothing is loaded); with ``--target`` only the registration figures are measured.

Per level also the CPU each process spent per registration (router, etcd, this client),
and, unless ``--no-ceiling``, the same client against a bare grpc.aio server that answers
``registerModel`` at once (``load_tests.bare_grpc``): the most any Python router could take
on this machine, side by side with the router's figure.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc

from load_tests import bare_grpc, harness, plots
from load_tests.generator import code_of
from load_tests.scenarios.churn_cost import cpu_seconds
from load_tests.probe import MeshProbe
from load_tests.recorder import Recorder
from load_tests.workload import make_models
from mesh.etcd_server import free_port
from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.proto.mmesh import model_mesh_pb2_grpc as mm_grpc

NAME = "scale"
HELP = "10k / 100k registered models: registration rate, router memory, new-router mirror time"


def add_arguments(p: argparse.ArgumentParser) -> None:
    harness.add_mesh_arguments(p, runtimes=0)
    p.add_argument("--counts", default="10000,100000", help="registered-model levels (cumulative)")
    p.add_argument("--concurrency", type=int, default=64, help="registerModel calls in flight")
    p.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                   help="skip the bare grpc.aio server run (the ceiling reference)")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def _register(stub: mm_grpc.ModelMeshStub, path: Path, lo: int, hi: int, concurrency: int,
                    rec: Recorder, t0: float, tag: str) -> None:
    info = mm.ModelInfo(type="onnx", path=f"file://{path}")
    ids = iter(range(lo, hi))

    async def worker() -> None:
        for i in ids:  # shared iterator: each id once, ``concurrency`` in flight
            t = time.perf_counter()
            try:
                await stub.registerModel(mm.RegisterModelRequest(modelId=f"{tag}team-{i % 100:02d}/model-{i:07d}",
                                                                 modelInfo=info), timeout=60)
                code = "OK"
            except grpc.aio.AioRpcError as e:
                code = code_of(e)
            rec.done(t - t0, time.perf_counter() - t0, code)

    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    return {"client": time.process_time(), **{k: cpu_seconds(pid) for k, pid in pids.items() if pid}}


def _per_call_us(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    return {k: round((after[k] - before[k]) / max(n, 1) * 1e6, 1) for k in before}


async def _ceiling(path: Path, n: int, concurrency: int) -> dict[str, Any]:
    """The same client and calls against a server that does nothing (a fresh process)."""
    loop = asyncio.get_running_loop()
    proc, endpoint = await loop.run_in_executor(None, bare_grpc.spawn)
    try:
        async with grpc.aio.insecure_channel(endpoint, options=harness.GRPC_OPTIONS) as ch:
            stub = mm_grpc.ModelMeshStub(ch)
            rec = Recorder("bare grpc")
            before = _cpu({"server": proc.pid})
            start = time.perf_counter()
            await _register(stub, path, 0, n, concurrency, rec, start, "bare-")
            took = time.perf_counter() - start
            cpu = _per_call_us(before, _cpu({"server": proc.pid}), n)
        return {"registrations_per_s": round(n / took, 1), "seconds": round(took, 2),
                "errors_by_code": {c: k for c, k in rec.codes.items() if c != "OK"},
                "register_latency_ms": rec.summary()["latency_ms"], "cpu_per_call_us": cpu}
    finally:
        proc.terminate()
        try:
            await loop.run_in_executor(None, proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _new_router(mesh: harness.Mesh, name: str) -> dict[str, Any]:
    assert mesh.local is not None
    loop = asyncio.get_running_loop()
    rp = await loop.run_in_executor(None, mesh.local.spawn_router, f"127.0.0.1:{free_port()}", name)
    try:
        async with grpc.aio.insecure_channel(rp.endpoint) as ch:
            mirrored = (await MeshProbe(ch).cluster()).registered_models
        return {"spawn_to_serving_s": round(rp.start_s, 3), "mirrored_models": mirrored,
                "rss_bytes": rss_bytes(rp.proc.pid)}
    finally:
        await loop.run_in_executor(None, rp.terminate)


async def run(args: argparse.Namespace) -> Path:
    out = harness.out_dir(args, NAME)
    levels = sorted(int(c) for c in args.counts.split(","))
    rec = Recorder("registerModel")
    rows: list[dict[str, Any]] = []
    async with harness.open_mesh(args) as mesh:
        one = make_models(mesh.work_dir / "models", 1, prefix="scale")
        path = one.paths[one.ids[0]]
        local = mesh.local is not None and mesh.local.router_proc is not None
        router_pid = mesh.local.router_proc.proc.pid if local else 0  # type: ignore[union-attr]
        etcd_pid = (mesh.local.local_etcd.pid or 0) if local and mesh.local.local_etcd else 0  # type: ignore[union-attr]
        pids = {"router": router_pid, "etcd": etcd_pid}
        baseline = await _new_router(mesh, "router-empty") if local else {}
        async with mesh.channel() as ch:
            stub = mm_grpc.ModelMeshStub(ch)
            t0 = time.perf_counter()
            done = 0
            rss0 = rss_bytes(router_pid) if local else 0
            for level in levels:
                lvl = Recorder(f"to {level}")
                cpu0 = _cpu(pids)
                start = time.perf_counter()
                await _register(stub, path, done, level, args.concurrency, lvl, t0, mesh.tag)
                took = time.perf_counter() - start
                cpu = _per_call_us(cpu0, _cpu(pids), level - done)
                for c, n in lvl.codes.items():
                    rec.codes[c] += n
                rec.ok_per_s.update(lvl.ok_per_s)
                rec.err_per_s.update(lvl.err_per_s)
                rec.hist.add(lvl.hist)
                status = await MeshProbe(ch).cluster()
                row: dict[str, Any] = {
                    "registered": status.registered_models, "new_registrations": level - done,
                    "seconds": round(took, 2), "registrations_per_s": round((level - done) / took, 1),
                    "errors_by_code": {c: n for c, n in lvl.codes.items() if c != "OK"},
                    "register_latency_ms": lvl.summary()["latency_ms"], "cpu_per_call_us": cpu}
                if local:
                    rss = rss_bytes(router_pid)
                    row |= {"router_rss_bytes": rss,
                            "router_rss_growth_per_model_bytes": round((rss - rss0) / max(level, 1)),
                            "new_router": await _new_router(mesh, f"router-{level}")}
                rows.append(row)
                done = level
        ceiling = await _ceiling(path, min(levels[0], 20_000), args.concurrency) if args.ceiling else {}
    rec.first_t, rec.last_t = 0.0, max(rec.ok_per_s or {0: 0})
    summary = {"levels": rows, "empty_registry_new_router": baseline, "router_rss_empty_bytes": rss0,
               "bare_grpc_ceiling": ceiling}
    pngs = [plots.throughput([rec], out / "throughput.png", "scale: registerModel completions per second")]
    if local:
        pngs.append(plots.bars({f"{r['registered']:,}": r["router_rss_bytes"] / 2**20 for r in rows}
                               | {"0": rss0 / 2**20}, out / "router_rss.png", "router RSS by registered models", "MiB"))
    return harness.write_results(out, NAME, args, {"summary": summary}, pngs)
