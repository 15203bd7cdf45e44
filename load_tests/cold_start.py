"""Cold start through the router, broken into pull, load and infer.

    python -m load_tests.cold_start [--sizes 70000,4000000,50000000] [--out DIR]

Starts moto's S3 server and a local mesh (etcd, one runtime, the router), uploads
generated ONNX models, registers them by ``s3://`` URI, and times the first
inference of each through the router (nothing cached anywhere). The parts:

- pull: the same object fetched by a (warmed-up) ``PullerFetcher`` into another cache;
- load: the runtime's own ``meshserve_model_load_seconds`` for that load
  (after the files are local: session creation, size measurement);
- infer: the next (warm) inference of the same request through the router;
- other: the rest (registry writes, copy-key handshake, gRPC hops).

Then the model is unloaded and requested again: a reload served from the
runtime's disk cache, no storage contact.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as v2
from tritonclient.grpc import service_pb2_grpc as v2_grpc

from load_tests.harness import save_json
from load_tests.storage_servers import MotoS3
from mesh import modelgen
from mesh.cli.local_mesh import LocalMesh
from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.proto.mmesh import model_mesh_pb2_grpc as mm_grpc
from mesh.proto.mmesh import model_runtime_pb2 as spi
from mesh.proto.mmesh import model_runtime_pb2_grpc as spi_grpc
from puller.fetcher import PullerFetcher
from puller.settings import PullerSettings


def load_seconds_sum(metrics_endpoint: str) -> float:
    text = urllib.request.urlopen(f"http://{metrics_endpoint}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith("meshserve_model_load_seconds_sum"):
            return float(line.split()[-1])
    return 0.0


async def run(sizes: list[int], work: Path) -> dict[str, object]:
    s3 = MotoS3(work).start()
    results: list[dict[str, object]] = []
    try:
        admin = s3.admin()
        admin.create_bucket(Bucket="models")
        specs = {}
        for size in sizes:
            spec = modelgen.spec_for_bytes(size, seed=size % 97)
            path = modelgen.write_onnx_mlp(spec, work / f"m{size}.onnx")
            admin.upload_file(str(path), "models", f"m{size}.onnx")
            specs[size] = (spec, path.stat().st_size)
        config = work / "storage-config.json"
        config.write_text(json.dumps({"default": s3.storage_entry()}))
        mesh = LocalMesh(runtimes=1, listen="127.0.0.1:0", data_dir=work / "mesh",
                         runtime_args=("--storage-config", str(config)))
        await mesh.start()
        channel = grpc.aio.insecure_channel(mesh.endpoint, options=[("grpc.max_receive_message_length", 2**28)])
        mgmt = mm_grpc.ModelMeshStub(channel)
        infer = v2_grpc.GRPCInferenceServiceStub(channel)
        rt = mesh.procs[0]
        # One fetcher for the pull-only timings, warmed up (boto3 client, connection)
        # on a throw-away object, as the runtime's puller is after its first pull.
        fetcher = PullerFetcher(PullerSettings(cache_dir=work / "pull-only", storage_config=config))
        admin.put_object(Bucket="models", Key="warmup", Body=b"x")
        await fetcher.fetch("warmup", "s3://models/warmup", {})
        try:
            for size, (spec, file_bytes) in specs.items():
                mid = f"cold-{size}"
                uri = f"s3://models/m{size}.onnx"
                await mgmt.registerModel(mm.RegisterModelRequest(modelId=mid, modelInfo=mm.ModelInfo(type="onnx", path=uri)))
                x = modelgen.sample_input(spec, batch=1)
                req = v2.ModelInferRequest(model_name=mid)
                req.inputs.add(name="INPUT0", datatype="FP32", shape=list(x.shape))
                req.raw_input_contents.append(x.astype(np.float32).tobytes())
                before = load_seconds_sum(rt.metrics_endpoint)
                t0 = time.perf_counter()
                await infer.ModelInfer(req, timeout=300)
                first = time.perf_counter() - t0
                load = load_seconds_sum(rt.metrics_endpoint) - before
                t0 = time.perf_counter()
                await infer.ModelInfer(req, timeout=60)
                warm = time.perf_counter() - t0
                # The pull alone, same object and credentials, not yet in this cache.
                t0 = time.perf_counter()
                await fetcher.fetch(mid, uri, {})
                pull = time.perf_counter() - t0
                # Unload, then the first request again: files come from the runtime's disk cache.
                async with grpc.aio.insecure_channel(rt.endpoint) as rch:
                    await spi_grpc.ModelRuntimeStub(rch).unloadModel(spi.UnloadModelRequest(modelId=mid))
                await asyncio.sleep(0.2)
                t0 = time.perf_counter()
                await infer.ModelInfer(req, timeout=300)
                cached = time.perf_counter() - t0
                results.append({
                    "model_id": mid, "file_bytes": file_bytes,
                    "first_inference_s": round(first, 4), "pull_s": round(pull, 4), "load_s": round(load, 4),
                    "infer_s": round(warm, 4), "other_s": round(max(0.0, first - pull - load - warm), 4),
                    "reload_from_disk_cache_s": round(cached, 4),
                })
                print(json.dumps(results[-1]), flush=True)
        finally:
            await fetcher.close()
            await channel.close()
            await mesh.stop()
    finally:
        s3.stop()
    return {"date": time.strftime("%Y-%m-%d"), "results": results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="70000,4000000,50000000", help="model sizes in bytes, comma-separated")
    ap.add_argument("--out", default="load_tests/results/cold_start")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshserve-cold-") as tmp:
        result = asyncio.run(run([int(s) for s in args.sizes.split(",")], Path(tmp)))
    save_json(Path(args.out), result)


if __name__ == "__main__":
    main()
