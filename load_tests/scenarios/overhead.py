"""overhead: the same tiny-model workload through the router, straight to the runtime, and
through ONNX Runtime in this process, in one run; ratios router ÷ direct.

Per path: an open-loop phase (Poisson at ``--rate``, latency from the intended send time)
for p50/p99, then a closed-loop phase (``--callers`` concurrent) for saturated req/s. The
paths take turns for ``--rounds`` rounds, each path's rounds pooled, so drifting load
from elsewhere on the machine falls on all of them alike. The router runs as its own process; client, router and runtime share this machine's cores,
so the ratios, not the absolute figures, are the point. ``--profile`` samples the router
with py-spy during its saturated phase and reports the hottest frames.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as v2

from load_tests import harness, plots
from load_tests.generator import Send, _sleep_until, closed_loop, grpc_sender, open_loop
from load_tests.probe import MeshProbe
from load_tests.recorder import Recorder
from load_tests.workload import make_models, register_all

NAME = "overhead"
HELP = "router vs direct-to-runtime vs in-process ONNX Runtime, same tiny-model workload"


def add_arguments(p: argparse.ArgumentParser) -> None:
    harness.add_mesh_arguments(p, runtimes=1, capacity="1Gi")
    p.add_argument("--rate", type=float, default=300.0, help="open-loop requests/s per path")
    p.add_argument("--seconds", type=float, default=8.0, help="length of each phase in each round")
    p.add_argument("--rounds", type=int, default=2, help="turns each path takes (pooled)")
    p.add_argument("--callers", type=int, default=8, help="closed-loop concurrent callers (saturation)")
    p.add_argument("--warmup", type=int, default=300, help="requests per path before measuring")
    p.add_argument("--profile", action="store_true", help="py-spy the router (local mesh) in its saturated phase")


def _inprocess_sender(path: Path, payload: bytes) -> Send:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # the runtime's session options
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    async def send(model: str, data: bytes) -> Any:
        # The same bytes the gRPC paths send, decoded here: the in-process path does the
        # request's work (parse, run, encode) without a network hop.
        req = v2.ModelInferRequest.FromString(data)
        x = np.frombuffer(req.raw_input_contents[0], dtype=np.float32).reshape(list(req.inputs[0].shape))
        (out,) = session.run(None, {"INPUT0": x})
        resp = v2.ModelInferResponse(model_name=model)
        resp.outputs.add(name="OUTPUT0", datatype="FP32", shape=list(out.shape))
        resp.raw_output_contents.append(out.tobytes())
        return resp.SerializeToString()

    return send


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Way:
    """One way to serve the request, measured over rounds into the same recorders."""

    def __init__(self, name: str, send: Send, pacer: Any = _sleep_until) -> None:
        self.send = send
        self.pacer = pacer  # how the open loop waits for each arrival (generator.open_loop)
        self.lat = Recorder(name)
        self.sat = Recorder(f"{name} saturated")
        self.lag: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    async def round(self, models: Sequence[str], payloads: dict[str, bytes], args: argparse.Namespace, i: int,
                    pids: dict[str, int], t0: float) -> None:
        """Open loop, then closed loop over the model sequence; CPU each process spent is
        charged to the saturated requests."""
        for k in range(args.warmup):
            await self.send(models[k % len(models)], payloads[models[k % len(models)]])
        lag = await open_loop(self.send, models, payloads, args.rate, args.seconds, self.lat, seed=args.seed + i,
                              t0=t0, pacer=self.pacer)
        self.lag = {k: max(v, self.lag.get(k, 0.0)) for k, v in lag.items() if k.startswith("lag_")}
        before = {k: cpu_seconds(p) for k, p in pids.items()}
        await closed_loop(self.send, models, payloads, args.callers, args.seconds, self.sat, t0=t0)
        for k, p in pids.items():
            self.cpu[k] = self.cpu.get(k, 0.0) + cpu_seconds(p) - before[k]

    def summary(self) -> dict[str, Any]:
        cpu = {f"cpu_ms_per_saturated_request_{k}": round(v * 1e3 / max(self.sat.ok, 1), 4) for k, v in self.cpu.items()}
        return {"open_loop": self.lat.summary(), "generator_lag_worst_round": self.lag, "saturated": self.sat.summary(),
                **cpu}


def py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if exe is None:
        return None
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200",
                             "--format", "raw", "--output", str(out), "--nonblocking", "--gil"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def hot_frames(raw: Path, top: int = 15) -> dict[str, Any]:
    """Self time by frame and inclusive time by frame, from py-spy's collapsed stacks."""
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        total += int(n)
        self_t[frames[-1]] += int(n)
        for f in set(frames):
            incl[f] += int(n)
    share = lambda c: [(f, round(100 * v / max(total, 1), 1)) for f, v in c.most_common(top)]  # noqa: E731
    ours = Counter({f: v for f, v in incl.items() if any(m in f for m in _OURS)})
    return {"samples": total, "self_pct": share(self_t), "inclusive_pct": share(incl),
            "inclusive_pct_meshserve_and_grpc": share(ours)}


_OURS = ("router/", "mesh/", "grpc/", "prometheus_client/", "google/protobuf")


async def run(args: argparse.Namespace) -> Path:
    out = harness.out_dir(args, NAME)
    async with harness.open_mesh(args) as mesh:
        models = make_models(mesh.work_dir / "models", 1, prefix=f"{mesh.tag}overhead", seed=args.seed)
        model = models.ids[0]
        async with mesh.channel() as ch:
            codes = await register_all(ch, models)
            routed = grpc_sender(ch)
            await routed(model, models.payloads[model])  # loads it
            status = await MeshProbe(ch).cluster()
            holder = next(i for i in status.instances if model in i.model_ids)
            profile: dict[str, Any] = {}
            pids = {"client": os.getpid()}
            if mesh.local is not None and mesh.local.router_proc is not None:
                pids |= {"router": mesh.local.router_proc.proc.pid,
                         "runtime": next(rp.proc.pid for rp in mesh.local.procs if rp.instance_id == holder.instance_id)}
            async with grpc.aio.insecure_channel(holder.endpoint, options=harness.GRPC_OPTIONS) as rch:
                paths = [Way("router", routed), Way("direct", grpc_sender(rch)),
                         Way("in-process", _inprocess_sender(models.paths[model], models.payloads[model]))]
                t0 = time.perf_counter()
                for i in range(args.rounds):
                    for path in paths:
                        await path.round([model], models.payloads, args, i, pids, t0)
            if args.profile and mesh.local is not None and mesh.local.router_proc is not None:
                profile = await _profile(mesh.local.router_proc.proc.pid, routed, model, models.payloads, args, out)

    summary = {p.lat.name: p.summary() for p in paths}
    r, d = summary["router"], summary["direct"]

    def ratio(a: float, b: float) -> float:
        return round(a / b, 3) if b else 0.0

    ratios: dict[str, Any] = {
        "p50_router_over_direct": ratio(r["open_loop"]["latency_ms"]["p50"], d["open_loop"]["latency_ms"]["p50"]),
        "p99_router_over_direct": ratio(r["open_loop"]["latency_ms"]["p99"], d["open_loop"]["latency_ms"]["p99"]),
        "saturated_rps_router_over_direct": ratio(r["saturated"]["ok_per_s"], d["saturated"]["ok_per_s"]),
        "p50_direct_over_inprocess": ratio(d["open_loop"]["latency_ms"]["p50"],
                                           summary["in-process"]["open_loop"]["latency_ms"]["p50"]),
    }
    # Judged on the unrounded figures: a ratio that rounds to 2.0 may still miss the target.
    rp50, dp50 = r["open_loop"]["latency_ms"]["p50"], d["open_loop"]["latency_ms"]["p50"]
    ratios["issue5_target_p50_le_2x"] = bool(dp50) and rp50 <= 2.0 * dp50
    lats = [p.lat for p in paths]
    sats = [p.sat for p in paths]
    pngs = [plots.latency_cdf(lats, out / "latency_cdf.png", f"overhead: open loop {args.rate:g} req/s, tiny model"),
            plots.latency_cdf(sats, out / "latency_cdf_saturated.png", f"overhead: closed loop, {args.callers} callers"),
            plots.throughput(sats, out / "throughput.png", "overhead: saturated throughput over time"),
            plots.bars({k: v["saturated"]["ok_per_s"] for k, v in summary.items()}, out / "saturated_rps.png",
                       "saturated throughput", "req/s")]
    body = {"summary": {"ratios": ratios, **summary}, "registration": codes, "model_file_bytes": models.file_bytes,
            "router_profile": profile}
    return harness.write_results(out, NAME, args, body, pngs)


async def _profile(pid: int, send: Send, model: str, payloads: dict[str, bytes], args: argparse.Namespace,
                   out: Path) -> dict[str, Any]:
    raw = out / "router_profile.txt"
    spy = py_spy(pid, args.seconds, raw)
    if spy is None:
        return {"error": "py-spy not installed"}
    await asyncio.sleep(1.0)  # let it attach
    await closed_loop(send, [model], payloads, args.callers, args.seconds, Recorder("profiled"))
    loop = asyncio.get_running_loop()
    rc = await loop.run_in_executor(None, spy.wait, 60)
    if rc != 0 or not raw.exists():
        err = spy.stderr.read().decode(errors="replace")[-500:] if spy.stderr else ""
        return {"error": f"py-spy exited {rc}: {err}"}
    return hot_frames(raw)
