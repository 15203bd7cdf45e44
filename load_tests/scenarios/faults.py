"""faults: steady traffic while the mesh is broken on purpose, one fault at a time.

A local mesh (etcd, ``--runtimes`` runtime processes, a router process). Multi-copy models
(``min_copies=2``) and single-copy models take open-loop traffic in separate recorders
while, in turn:

(a) a runtime holding copies is SIGKILLed (not restarted);
(b) etcd is stopped for ``--etcd-outage-s`` and started again (writes are tried meanwhile);
    "converged" is load_tests/convergence.py's: the LOADED copy keys in etcd = the models
    the live runtimes serve = the router's mirror, same instances, and a write succeeds,
    timed from etcd's restart (and checked again a lease TTL later);
(c) the router process is restarted (SIGTERM, then a new one on the same port);
(d) a model on unreachable storage and a corrupt model file are loaded;
(e) a model larger than the runtimes' disk cache budget is loaded.

Per fault: failed requests by code, time to recover (last failure after the fault), the
registrations and loaded copies before and after, and the fault's own observations. The
client reconnects with a short backoff (100-500 ms) so the router's recovery, not gRPC's
default reconnect backoff, is what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from load_tests import convergence, harness, plots
from load_tests.generator import Send, code_of, open_loop
from load_tests.recorder import Recorder
from load_tests.workload import ModelSet, make_models, register_all
from mesh import modelgen
from mesh.etcd_server import free_port
from mesh.proto.meshserve.v1 import admin_pb2 as adm
from mesh.proto.meshserve.v1 import admin_pb2_grpc as adm_grpc
from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.proto.mmesh import model_mesh_pb2_grpc as mm_grpc
from mesh.registry.etcd_store import EtcdStore
from mesh.registry.keys import KeySchema
from mesh.registry.registry import Registry

NAME = "faults"
HELP = "SIGKILL a runtime, stop etcd, restart the router, bad storage, full disk cache: errors and recovery"
INFER = "/inference.GRPCInferenceService/ModelInfer"
CHANNEL_OPTIONS = [*harness.GRPC_OPTIONS, ("grpc.initial_reconnect_backoff_ms", 100),
                   ("grpc.min_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 500)]
#: The runtimes' disk cache budget: room for the traffic's models, not for the (e) model.
CACHE_BUDGET = 8 * 2**20


def add_arguments(p: argparse.ArgumentParser) -> None:
    harness.add_mesh_arguments(p, runtimes=3, capacity="256Mi")
    p.add_argument("--multi", type=int, default=6, help="models kept at 2 copies (min_copies=2)")
    p.add_argument("--single", type=int, default=12, help="single-copy models")
    p.add_argument("--rate", type=float, default=60.0, help="open-loop requests/s per group")
    p.add_argument("--phase-s", type=float, default=15.0, help="traffic per fault phase")
    p.add_argument("--etcd-outage-s", type=float, default=30.0)
    p.add_argument("--faults", default="abcde", help="which faults to run, in order (letters a-e)")
    p.add_argument("--lease-ttl-s", type=int, default=3, help="runtimes' lease TTL (a killed runtime's copies vanish)")


class Failures:
    """A sender that notes when each failure happened (seconds since ``t0``)."""

    def __init__(self, call: Any, t0: float) -> None:
        self._call, self._t0 = call, t0
        self.times: list[tuple[float, str]] = []
        #: One message per code, to say what the failures were.
        self.examples: dict[str, str] = {}

    async def send(self, model: str, payload: bytes) -> Any:
        try:
            return await self._call(payload, timeout=10)
        except Exception as e:  # counted, never a crash of the run
            code = code_of(e)
            self.times.append((time.perf_counter() - self._t0, code))
            if code not in self.examples:
                self.examples[code] = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
            raise

    def last_after(self, t: float) -> float | None:
        after = [ft for ft, _ in self.times if ft >= t]
        return max(after) if after else None


async def _state(ch: grpc.aio.Channel) -> dict[str, int]:
    admin = adm_grpc.MeshAdminStub(ch)
    try:
        c = await admin.GetClusterStatus(adm.GetClusterStatusRequest(), timeout=10)
        listed = await admin.ListModels(adm.ListModelsRequest(page_size=10_000), timeout=10)
    except grpc.aio.AioRpcError as e:
        return {"error": e.code().name}  # type: ignore[dict-item]
    return {"registrations": len(listed.models), "loaded_copies": c.loaded_copies, "instances": len(c.instances)}


async def _until(cond: Callable[[], Awaitable[bool]], timeout_s: float, every_s: float = 0.1) -> float | None:
    """Seconds until ``cond()`` held, None if it never did within ``timeout_s``."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        try:
            if await cond():
                return round(time.perf_counter() - start, 3)
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(every_s)
    return None


async def _phase(ch: grpc.aio.Channel, multi: ModelSet, single: ModelSet, args: argparse.Namespace,
                 fault: Callable[[float], Awaitable[dict[str, Any]]], fault_at_s: float,
                 recorders: list[Recorder] | None = None) -> dict[str, Any]:
    """Traffic on both groups for ``--phase-s`` (longer if the fault takes longer); the fault
    runs ``fault_at_s`` in and gets the time it started (seconds since the phase's t0)."""
    before = await _state(ch)
    t0 = time.perf_counter()
    call = ch.unary_unary(INFER)
    groups = {"multi_copy": (multi, Failures(call, t0), Recorder("multi-copy models")),
              "single_copy": (single, Failures(call, t0), Recorder("single-copy models"))}
    stop = asyncio.Event()

    async def drive(models: ModelSet, f: Failures, rec: Recorder, seed: int) -> None:
        send: Send = f.send
        while not stop.is_set():  # rounds of --phase-s until the fault is over
            await open_loop(send, models.ids, models.payloads, args.rate, args.phase_s, rec, seed=seed, t0=t0,
                            stop=stop)
            seed += 1

    async def inject() -> dict[str, Any]:
        await asyncio.sleep(fault_at_s)
        t_fault = time.perf_counter() - t0
        try:
            return {"t_fault_s": round(t_fault, 3), **await fault(t_fault)}
        finally:
            await asyncio.sleep(max(0.0, args.phase_s - (time.perf_counter() - t0)))
            stop.set()

    async with asyncio.TaskGroup() as tg:
        for i, (models, f, rec) in enumerate(groups.values()):
            tg.create_task(drive(models, f, rec, args.seed + i))
        observed = tg.create_task(inject())
    obs = observed.result()
    if recorders is not None:
        recorders.extend(rec for _, _, rec in groups.values())
    out: dict[str, Any] = {"observed": obs, "before": before, "after": await _state(ch)}
    for name, (_, f, rec) in groups.items():
        s = rec.summary()
        last = f.last_after(obs["t_fault_s"])
        out[name] = {"requests": s["requests"], "failed": s["errors"], "failed_by_code": s["errors_by_code"],
                     "recovered_after_s": 0.0 if last is None else round(last - obs["t_fault_s"], 3),
                     "failure_examples": f.examples,
                     "latency_ms": s["latency_ms"]}
    return out


async def _load_status(ch: grpc.aio.Channel, model_id: str, path: str) -> dict[str, Any]:
    """Registers the model, sends one inference request (which loads it), and reports the
    answer's code and message, then the model's status."""
    from tritonclient.grpc import service_pb2 as v2

    stub = mm_grpc.ModelMeshStub(ch)
    await stub.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=mm.ModelInfo(type="onnx", path=path)),
                             timeout=30)
    request = v2.ModelInferRequest(model_name=model_id)
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16]).contents.fp32_contents.extend([0.0] * 16)
    try:
        await ch.unary_unary(INFER)(request.SerializeToString(), timeout=120)
        answer = {"code": "OK"}
    except grpc.aio.AioRpcError as e:
        answer = {"code": e.code().name, "message": e.details()}
    seen: list[mm.ModelStatusInfo] = []

    async def settled() -> bool:  # the load's outcome, failure reason included, is in the status
        seen[:] = [await stub.getModelStatus(mm.GetStatusRequest(modelId=model_id), timeout=10)]
        return seen[0].status == mm.ModelStatusInfo.LOADED or bool(seen[0].errors)

    after = await _until(settled, 120, 0.2)
    st = seen[0]
    return {"first_request": answer, "status": mm.ModelStatusInfo.ModelStatus.Name(st.status),
            "errors": list(st.errors), "settled_s": after}


async def _runtimes_ready(ch: grpc.aio.Channel) -> dict[str, bool]:
    from tritonclient.grpc import service_pb2 as v2
    from tritonclient.grpc import service_pb2_grpc as v2_grpc

    c = await adm_grpc.MeshAdminStub(ch).GetClusterStatus(adm.GetClusterStatusRequest(), timeout=10)
    out = {}
    for inst in c.instances:
        async with grpc.aio.insecure_channel(inst.endpoint) as rch:
            r = await v2_grpc.GRPCInferenceServiceStub(rch).ServerReady(v2.ServerReadyRequest(), timeout=5)
            out[inst.instance_id] = bool(r.ready)
    return out


async def run(args: argparse.Namespace) -> Path:
    out = harness.out_dir(args, NAME)
    env = {"MESHSERVE_MODEL_TYPES": "onnx", "MESHSERVE_LEASE_TTL_S": str(args.lease_ttl_s),
           "MESHSERVE_CACHE_BUDGET": str(CACHE_BUDGET)}
    results: dict[str, Any] = {}
    timelines: dict[str, list[Recorder]] = {}
    async with harness.open_mesh(args, runtime_env=env) as mesh:
        local = mesh.local
        assert local is not None and local.router_proc is not None and local.local_etcd is not None, \
            "faults needs a local mesh (no --target): it kills and restarts its processes"
        multi = make_models(mesh.work_dir / "models", args.multi, prefix="multi", seed=args.seed)
        single = make_models(mesh.work_dir / "models", args.single, prefix="single", seed=args.seed + 1)
        async with grpc.aio.insecure_channel(mesh.target, options=CHANNEL_OPTIONS) as ch:
            await register_all(ch, multi)
            await register_all(ch, single)
            admin = adm_grpc.MeshAdminStub(ch)
            stub = mm_grpc.ModelMeshStub(ch)
            for m in multi.ids:
                await admin.SetModelConfig(adm.SetModelConfigRequest(model_id=m, min_copies=2), timeout=30)
            for m in multi.ids + single.ids:
                await stub.ensureLoaded(mm.EnsureLoadedRequest(modelId=m, sync=True), timeout=60)

            async def two_copies() -> bool:
                for m in multi.ids:
                    st = await stub.getModelStatus(mm.GetStatusRequest(modelId=m), timeout=10)
                    if sum(c.copyStatus == mm.ModelStatusInfo.LOADED for c in st.modelCopyInfos) < 2:
                        return False
                return True

            results["setup_two_copies_after_s"] = await _until(two_copies, 120, 0.5)

            # (a) SIGKILL the runtime holding the most copies.
            async def kill(t: float) -> dict[str, Any]:
                c = await admin.GetClusterStatus(adm.GetClusterStatusRequest(), timeout=10)
                victim = max(c.instances, key=lambda i: len(i.model_ids))
                proc = next(p for p in local.procs if p.instance_id == victim.instance_id)
                proc.proc.kill()
                return {"killed": victim.instance_id, "models_on_it": len(victim.model_ids)}

            if "a" in args.faults:
                results["a_runtime_sigkill"] = await _phase(ch, multi, single, args, kill, 3.0,
                                                   timelines.setdefault("a_runtime_sigkill", []))

            # (b) etcd down for --etcd-outage-s; a registration every second meanwhile.
            async def etcd_outage(t: float) -> dict[str, Any]:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, local.local_etcd.stop)  # type: ignore[union-attr]
                writes: dict[str, int] = {}
                end = time.perf_counter() + args.etcd_outage_s
                i = 0
                while time.perf_counter() < end:
                    try:
                        await stub.registerModel(mm.RegisterModelRequest(
                            modelId=f"outage/w{i}", modelInfo=mm.ModelInfo(type="onnx", path=str(multi.paths[multi.ids[0]]))),
                            timeout=min(8.0, max(0.5, end - time.perf_counter())))
                        code = "OK"
                    except grpc.aio.AioRpcError as e:
                        code = e.code().name
                    writes[code] = writes.get(code, 0) + 1
                    i += 1
                    await asyncio.sleep(max(0.0, min(1.0, end - time.perf_counter())))
                await loop.run_in_executor(None, local.local_etcd.start)  # type: ignore[union-attr]
                back = time.perf_counter()
                live = {p.instance_id: p.endpoint for p in local.procs if p.proc.poll() is None}
                ids = multi.ids + single.ids
                seen: list[convergence.Convergence] = []
                # A just-restarted etcd on a busy machine can take seconds to answer; the probe's
                # wait is not the measurement (convergence is timed from ``back``).
                store = EtcdStore(local.local_etcd.endpoint, timeout_s=10.0)  # type: ignore[union-attr]
                await store.start()
                try:
                    registry = Registry(store, KeySchema(local.mesh))

                    async def converged() -> bool:
                        # convergence.check: LOADED copy keys in etcd = models the live
                        # runtimes serve = the router's mirror, same instances, a write OK.
                        seen[:] = [await convergence.check(registry, ch, ids, probe_path=str(multi.paths[ids[0]]),
                                                           live=live, timeout_s=2.0)]
                        return seen[0].converged

                    after = await _until(converged, 90, 0.1)
                    took = None if after is None else round(time.perf_counter() - back, 3)
                    # Still converged a lease TTL later (no lease that expires afterwards undoes it).
                    await asyncio.sleep(args.lease_ttl_s + 1)
                    stable = await converged()
                finally:
                    await store.close()
                last = seen[0] if seen else convergence.Convergence()
                return {"outage_s": args.etcd_outage_s, "writes_during_outage": writes,
                        "converged_after_restart_s": took, "still_converged_after_ttl": stable,
                        "convergence": last.describe(), "copies_in_etcd": len(last.etcd)}

            if "b" in args.faults:
                results["b_etcd_outage"] = await _phase(ch, multi, single, args, etcd_outage, 2.0,
                                                   timelines.setdefault("b_etcd_outage", []))

            # (c) restart the router process on the same port.
            async def restart_router(t: float) -> dict[str, Any]:
                loop = asyncio.get_running_loop()
                old = local.router_proc
                assert old is not None
                start = time.perf_counter()
                await loop.run_in_executor(None, old.terminate)
                stopped = time.perf_counter()
                local.router_proc = await loop.run_in_executor(None, local.spawn_router, local.listen, "router-2",
                                                               local.metrics_listen)
                ready = time.perf_counter()
                first_ok = await _until(lambda: _ok(ch, single), 30, 0.02)
                return {"stop_s": round(stopped - start, 3), "new_router_ready_s": round(ready - stopped, 3),
                        "routing_back_after_ready_s": first_ok}

            if "c" in args.faults:
                results["c_router_restart"] = await _phase(ch, multi, single, args, restart_router, 3.0,
                                                   timelines.setdefault("c_router_restart", []))

            # (d) unreachable storage and a corrupt model file.
            corrupt = mesh.work_dir / "corrupt.onnx"
            corrupt.write_bytes(os.urandom(50_000))

            async def bad_storage(t: float) -> dict[str, Any]:
                unreachable = await _load_status(ch, "fault/unreachable", f"http://127.0.0.1:{free_port()}/m.onnx")
                bad = await _load_status(ch, "fault/corrupt", str(corrupt))
                return {"unreachable": unreachable, "corrupt": bad, "runtimes_ready": await _runtimes_ready(ch)}

            if "d" in args.faults:
                results["d_bad_storage"] = await _phase(ch, multi, single, args, bad_storage, 2.0,
                                                   timelines.setdefault("d_bad_storage", []))

            # (e) a model larger than the disk cache budget.
            big = modelgen.write_onnx_mlp(modelgen.spec_for_bytes(int(CACHE_BUDGET * 1.5), seed=9),
                                          mesh.work_dir / "big.onnx")

            async def cache_full(t: float) -> dict[str, Any]:
                got = await _load_status(ch, "fault/too-big", str(big))
                return {"too_big": got, "cache_budget_bytes": CACHE_BUDGET, "model_bytes": big.stat().st_size,
                        "runtimes_ready": await _runtimes_ready(ch)}

            if "e" in args.faults:
                results["e_cache_budget"] = await _phase(ch, multi, single, args, cache_full, 2.0,
                                                   timelines.setdefault("e_cache_budget", []))
    pngs = [plots.throughput(recs, out / f"{key}.png", f"faults: {key.replace('_', ' ')} (multi / single copy)")
            for key, recs in timelines.items()]
    return harness.write_results(out, NAME, args, {"summary": results}, pngs)


async def _ok(ch: grpc.aio.Channel, models: ModelSet) -> bool:
    m = models.ids[0]
    await ch.unary_unary(INFER)(models.payloads[m], timeout=2)
    return True
