"""churn-cost: what a hit and a miss cost in CPU, per process kind, under model churn.

First every model is pulled into every runtime's disk cache (``loadModel`` then
``unloadModel`` straight to each runtime; ``--cold`` skips it), so misses are what they
are in steady state: a load from the local disk cache, not a first download. Then two
phases on one local mesh (etcd, runtimes, a router process), each measured from the
processes' own CPU times (``/proc/<pid>/stat``, user + system):

1. *hits*: ``--callers`` closed-loop callers over a hot set that fits (loaded first), so
   every request is a hit: CPU per hit for the router, the runtimes and etcd;
2. *churn*: the same callers over ``--models`` models drawn Zipf(``--zipf``) with room for
   ``--fraction`` of them, so loads and evictions run beside the hits. CPU per miss is
   that phase's CPU less its hits at the phase-1 cost per hit, divided by the misses
   (the runtimes' successful loads).

A third figure isolates the runtime's own cost of a miss: ``--spi-loads`` loadModel calls
straight to the first runtime (two in flight), cycling over every model, so each load
comes from the disk cache and evicts one (runtime and etcd CPU per load, loads/s).

Reported beside req/s and p50/p99 of the churn phase, so the cost of model churn is
tracked from run to run. Needs a local mesh (process ids); ``--target`` is refused.

``--gateway``: the same with Envoy in front (programmed by the router over xDS): both
phases' traffic goes to Envoy, with the model named in ``mm-model-id`` (``--envoy-body``:
in the body only), and Envoy is a process kind of its own. Registration, probes and the
disk-cache fill still talk to the router and the runtimes.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from load_tests import harness, plots
from load_tests.generator import closed_loop, grpc_sender
from load_tests.probe import MeshProbe, delta, scrape
from load_tests.recorder import Recorder
from load_tests.scenarios.overhead import py_spy, hot_frames
from load_tests.scenarios.zipf_cache import capacity_for
from load_tests.workload import Zipf, make_models, register_all
from mesh.proto.mmesh import model_runtime_pb2 as rpb
from mesh.proto.mmesh import model_runtime_pb2_grpc as rpg

NAME = "churn-cost"
HELP = "CPU per hit and per miss for router, runtime and etcd under Zipf model churn"
KINDS = ("router", "runtime", "etcd")
#: With --gateway, Envoy's CPU is a kind of its own (per hit and per miss).
GATEWAY_KINDS = (*KINDS, "envoy")


def add_arguments(p: argparse.ArgumentParser) -> None:
    harness.add_mesh_arguments(p, runtimes=2)
    p.add_argument("--models", type=int, default=200)
    p.add_argument("--fraction", type=float, default=0.4, help="capacity as a fraction of the models")
    p.add_argument("--size-bytes", type=int, default=26_000, help="model file size (0 = the 70 KB tiny MLP)")
    p.add_argument("--zipf", type=float, default=1.1, help="popularity exponent s")
    p.add_argument("--callers", type=int, default=8, help="closed-loop concurrent callers")
    p.add_argument("--seconds", type=float, default=30.0, help="length of the churn phase")
    p.add_argument("--hit-seconds", type=float, default=10.0, help="length of the all-hits phase")
    p.add_argument("--spi-loads", type=int, default=600,
                   help="loadModel calls straight to one runtime for the runtime-only miss cost (0 = skip)")
    p.add_argument("--cold", action="store_true",
                   help="skip filling the runtimes' disk caches first (misses then include first pulls)")
    p.add_argument("--gateway", action="store_true",
                   help="send the traffic through Envoy in front of the router (Envoy counted as a kind)")
    p.add_argument("--envoy-body", action="store_true",
                   help="with --gateway: name the model only in the body (Envoy reads it), not in mm-model-id")
    p.add_argument("--envoy-concurrency", type=int, default=1, help="with --gateway: Envoy worker threads")
    p.add_argument("--profile", action="store_true",
                   help="py-spy the router and the first runtime during the churn phase (hottest frames)")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds per process kind between ``start`` and ``stop``."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids
        self._t0: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {k: sum(cpu_seconds(p) for p in ps) for k, ps in self.pids.items()}

    def start(self) -> None:
        self._t0 = self._now()

    def stop(self) -> dict[str, float]:
        now = self._now()
        return {k: now[k] - self._t0[k] for k in self.pids}


def _pids(mesh: harness.Mesh) -> dict[str, list[int]]:
    local = mesh.local
    if local is None or local.router_proc is None:
        raise SystemExit("churn-cost measures process CPU times: it needs a local mesh (no --target)")
    etcd = local.local_etcd.pid if local.local_etcd is not None else None
    pids = {"router": [local.router_proc.proc.pid], "runtime": [p.proc.pid for p in local.procs],
            "etcd": [etcd] if etcd else [], "client": [os.getpid()]}
    if local.gateway_proc is not None and local.gateway_proc.proc is not None:
        pids["envoy"] = [local.gateway_proc.proc.pid]
    return pids


def per_request_ms(cpu: dict[str, float], n: int) -> dict[str, float]:
    return {k: round(v * 1e3 / max(n, 1), 4) for k, v in cpu.items()}


def miss_cost_ms(churn_cpu: dict[str, float], hit_ms: dict[str, float], hits: int, misses: int) -> dict[str, float]:
    """(CPU of the churn phase - its hits at the hit cost) / misses, per kind (ms)."""
    return {k: round((churn_cpu[k] * 1e3 - hit_ms[k] * hits) / max(misses, 1), 3) for k in churn_cpu}


async def _fill_disk_caches(mesh: harness.Mesh, models: Any) -> None:
    """Every model into every runtime's disk cache (load, then unload, straight to it)."""
    assert mesh.local is not None
    for rp in mesh.local.procs:
        async with grpc.aio.insecure_channel(rp.endpoint) as ch:
            spi = rpg.ModelRuntimeStub(ch)
            for m in models.ids:
                await spi.loadModel(rpb.LoadModelRequest(modelId=m, modelType="onnx",
                                                         modelPath=f"file://{models.paths[m]}"), timeout=60)
                await spi.unloadModel(rpb.UnloadModelRequest(modelId=m), timeout=60)


async def _spi_loads(mesh: harness.Mesh, models: Any, n: int, pids: dict[str, list[int]]) -> dict[str, Any]:
    """CPU per loadModel on one runtime (every load evicts one), then the models it holds unloaded."""
    assert mesh.local is not None
    rp = mesh.local.procs[0]
    meter = CpuMeter({"runtime": [rp.proc.pid], "etcd": pids["etcd"]})
    async with grpc.aio.insecure_channel(rp.endpoint) as ch:
        spi = rpg.ModelRuntimeStub(ch)

        async def load(i: int) -> None:
            m = models.ids[i % len(models.ids)]
            await spi.loadModel(rpb.LoadModelRequest(modelId=m, modelType="onnx", modelPath=f"file://{models.paths[m]}"),
                                timeout=60)

        for i in range(len(models.ids)):  # fill the room first: then every load evicts
            await load(i)
        meter.start()
        t0 = time.perf_counter()
        for i in range(0, n, 2):
            await asyncio.gather(load(i), load(i + 1))
        took = time.perf_counter() - t0
        cpu = meter.stop()
        for m in models.ids:
            await spi.unloadModel(rpb.UnloadModelRequest(modelId=m), timeout=60)
    loads = n - n % 2
    return {"loads": loads, "loads_per_s": round(loads / took, 1),
            "cpu_ms_per_load": {k: round(v * 1e3 / max(loads, 1), 3) for k, v in cpu.items()}}


def _retries(metrics: str) -> dict[str, float]:
    """The router's request retries by status code so far."""
    return {k.partition("reason=")[2].rstrip("}") or k: v for k, v in scrape(metrics).items()
            if k.startswith("meshserve_request_retries_total")}


def _start_profiles(pids: dict[str, list[int]], args: argparse.Namespace,
                    out: Path) -> dict[str, tuple[subprocess.Popen[bytes] | None, Path]]:
    targets = {"router": pids["router"][0], "runtime": pids["runtime"][0]}
    return {k: (py_spy(pid, args.seconds, out / f"{k}_profile.txt"), out / f"{k}_profile.txt")
            for k, pid in targets.items()}


async def _finish_profiles(spies: dict[str, tuple[subprocess.Popen[bytes] | None, Path]]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    found: dict[str, Any] = {}
    for kind, (spy, raw) in spies.items():
        if spy is None:
            found[kind] = {"error": "py-spy not installed"}
            continue
        rc = await loop.run_in_executor(None, spy.wait, 60)
        found[kind] = hot_frames(raw) if rc == 0 and raw.exists() else {"error": f"py-spy exited {rc}"}
    return found


async def run(args: argparse.Namespace) -> Path:
    out = harness.out_dir(args, NAME)
    slots_total = max(1, round(args.fraction * args.models))
    per_runtime = math.ceil(slots_total / max(args.runtimes, 1))
    with tempfile.TemporaryDirectory() as tmp:
        file_bytes = make_models(Path(tmp), 1, size_bytes=args.size_bytes, seed=args.seed).file_bytes
    capacity = capacity_for(per_runtime, file_bytes)
    zipf = Zipf(args.models, args.zipf, args.seed)
    draws = [int(i) for i in zipf.draw(200_000)]
    kinds = GATEWAY_KINDS if args.gateway else KINDS
    async with harness.open_mesh(args, capacity=str(capacity), gateway=args.gateway,
                                 gateway_concurrency=args.envoy_concurrency) as mesh:
        pids = _pids(mesh)
        meter = CpuMeter(pids)
        models = make_models(mesh.work_dir / "models", args.models, size_bytes=args.size_bytes,
                             prefix=f"{mesh.tag}cost", seed=args.seed)
        assert mesh.local is not None
        async with grpc.aio.insecure_channel(mesh.local.router_endpoint, options=harness.GRPC_OPTIONS) as ch, \
                mesh.channel() as traffic:
            reg = await register_all(ch, models)
            # mesh.channel() is Envoy's listener when --gateway, else the router's.
            send = grpc_sender(traffic, header=args.gateway and not args.envoy_body)
            probe = MeshProbe(ch, mesh.router_metrics)
            if not args.cold:
                await _fill_disk_caches(mesh, models)
            spi_only = await _spi_loads(mesh, models, args.spi_loads, pids) if args.spi_loads else {}
            # Phase 1: a hot set well inside the room, loaded first: every request a hit.
            hot = models.ids[:max(1, per_runtime // 2)]
            for m in hot:
                await send(m, models.payloads[m])
            await closed_loop(send, hot, models.payloads, args.callers, 1.0, Recorder("warm-up"))
            hit_rec = Recorder("hits only")
            before = await probe.snapshot()
            meter.start()
            await closed_loop(send, hot, models.payloads, args.callers, args.hit_seconds, hit_rec)
            hit_cpu = meter.stop()
            hit_mesh = delta(before, await probe.snapshot())
            hit_ms = per_request_ms(hit_cpu, hit_rec.ok)
            # Phase 2: Zipf over every model, room for a fraction: loads and evictions.
            seq = [models.ids[i] for i in draws]
            churn_rec = Recorder("zipf churn")
            before = await probe.snapshot()
            retries0 = _retries(mesh.router_metrics)
            spies = _start_profiles(pids, args, out) if args.profile else {}
            meter.start()
            t0 = time.perf_counter()
            await closed_loop(send, seq, models.payloads, args.callers, args.seconds, churn_rec)
            churn_cpu = meter.stop()
            profiles = await _finish_profiles(spies)
            wall = time.perf_counter() - t0
            churn_mesh = delta(before, await probe.snapshot())
            retries = {k: v - retries0.get(k, 0.0) for k, v in _retries(mesh.router_metrics).items()}
    misses = int(churn_mesh["loads"])
    hits = max(churn_rec.ok - misses, 0)
    miss_ms = miss_cost_ms({k: v for k, v in churn_cpu.items() if k in kinds}, hit_ms, hits, misses)
    traffic = churn_rec.summary()
    summary = {
        "path": ("envoy-body" if args.envoy_body else "envoy-header") if args.gateway else "router",
        "loadavg": os.getloadavg(), "models": args.models, "model_file_bytes": file_bytes, "slots": per_runtime * args.runtimes,
        "capacity_per_runtime_bytes": capacity, "zipf": args.zipf, "callers": args.callers,
        "req_per_s": traffic["ok_per_s"], "p50_ms": traffic["latency_ms"]["p50"],
        "p99_ms": traffic["latency_ms"]["p99"], "errors": traffic["errors_by_code"],
        "requests": churn_rec.ok, "misses": misses, "miss_share": round(misses / max(churn_rec.ok, 1), 4),
        "evictions": int(churn_mesh["evictions"]),
        "router_retries": {k: int(v) for k, v in retries.items() if v},
        "disk_caches_filled_first": not args.cold,
        "cpu_ms_per_hit": {k: hit_ms[k] for k in kinds} | {"sum": round(sum(hit_ms[k] for k in kinds), 4)},
        "cpu_ms_per_miss": miss_ms | {"sum": round(sum(miss_ms.values()), 3)},
        "runtime_only_loads": spi_only,
        "hit_phase": {"req_per_s": hit_rec.summary()["ok_per_s"], "p50_ms": hit_rec.pct_ms(50),
                      "p99_ms": hit_rec.pct_ms(99), "loads": hit_mesh["loads"]},
        "cpu_s": {"hit_phase": hit_cpu, "churn_phase": churn_cpu}, "churn_wall_s": round(wall, 2),
        "client_cpu_ms_per_request": round(churn_cpu["client"] * 1e3 / max(churn_rec.ok, 1), 4),
    }
    if profiles:
        summary["profiles"] = profiles
    pngs = [plots.latency_cdf([hit_rec, churn_rec], out / "latency_cdf.png",
                              f"churn-cost: {args.callers} callers, Zipf {args.zipf}"),
            plots.bars({f"{kind} per miss": miss_ms[kind] for kind in kinds}
                       | {f"{kind} per hit": hit_ms[kind] for kind in kinds},
                       out / "cpu_ms.png", "CPU per request by process kind", "ms")]
    return harness.write_results(out, NAME, args, {"summary": summary, "registration": reg,
                                                   "traffic": traffic}, pngs)
