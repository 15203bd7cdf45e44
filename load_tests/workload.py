"""The workload: real ONNX models on disk, Zipf popularity, seeded inputs, request bytes.

Each model is a generated MLP (``mesh.modelgen``) of a chosen size; requests are
serialised once per model (the generator then only sends bytes, so the client costs
little and every run sends the same payloads for the same seed).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as v2

from mesh import modelgen
from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.proto.mmesh import model_mesh_pb2_grpc as mm_grpc

TINY_HIDDEN = 124  # ~70 KB: the runtime benchmark's tiny model


@dataclass(frozen=True)
class ModelSet:
    ids: list[str]
    paths: dict[str, Path]
    payloads: dict[str, bytes]
    file_bytes: int


def spec_for(size_bytes: int, seed: int) -> modelgen.MlpSpec:
    if size_bytes <= 0:
        return modelgen.MlpSpec(hidden=TINY_HIDDEN, seed=seed)
    return modelgen.spec_for_bytes(size_bytes, seed=seed)


def request_bytes(model_id: str, x: np.ndarray) -> bytes:
    req = v2.ModelInferRequest(model_name=model_id)
    req.inputs.add(name="INPUT0", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    return bytes(req.SerializeToString())


def make_models(folder: Path, n: int, *, size_bytes: int = 0, prefix: str = "lt", seed: int = 0,
                distinct_files: int = 8) -> ModelSet:
    """``n`` model ids over ``distinct_files`` ONNX files (ids differ, weights repeat: the
    runtime loads each id separately, so memory and load cost are per id, and disk stays small)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(min(n, distinct_files)):
        spec = spec_for(size_bytes, seed * 1000 + k)
        path = folder / f"{prefix}-{size_bytes}-{seed}-{k}.onnx"
        if not path.exists():
            modelgen.write_onnx_mlp(spec, path)
        files.append((spec, path))
    ids, paths, payloads = [], {}, {}
    for i in range(n):
        spec, path = files[i % len(files)]
        model_id = f"{prefix}/m{i:06d}"
        ids.append(model_id)
        paths[model_id] = path
        payloads[model_id] = request_bytes(model_id, modelgen.sample_input(spec, batch=1, seed=seed + i))
    return ModelSet(ids, paths, payloads, files[0][1].stat().st_size if files else 0)


class Zipf:
    """Model index i (0-based) drawn with probability proportional to 1 / (i+1)^s."""

    def __init__(self, n: int, s: float, seed: int) -> None:
        weights = 1.0 / np.arange(1, n + 1) ** s
        self.p = weights / weights.sum()
        self.cdf = np.cumsum(self.p)
        self.rng = np.random.default_rng(seed)

    def draw(self, k: int) -> np.ndarray:
        return np.minimum(np.searchsorted(self.cdf, self.rng.random(k)), len(self.cdf) - 1)


async def register_all(channel: grpc.aio.Channel, models: ModelSet, ids: list[str] | None = None,
                       concurrency: int = 32) -> dict[str, int]:
    """registerModel for each id (bounded in flight); returns counts by status code."""
    stub = mm_grpc.ModelMeshStub(channel)
    sem = asyncio.Semaphore(concurrency)
    codes: dict[str, int] = {}

    async def one(model_id: str) -> None:
        async with sem:
            try:
                await stub.registerModel(mm.RegisterModelRequest(
                    modelId=model_id, modelInfo=mm.ModelInfo(type="onnx", path=f"file://{models.paths[model_id]}")),
                    timeout=60)
                code = "OK"
            except grpc.aio.AioRpcError as e:
                code = e.code().name
            codes[code] = codes.get(code, 0) + 1

    await asyncio.gather(*(one(m) for m in (ids if ids is not None else models.ids)))
    return codes
