"""Tabular model formats in one runtime: load time, charged size, inference p50, RSS.

    python -m load_tests.formats_bench [--seconds 5] [--models 1000] [--out load_tests/results/formats]

Starts its own etcd and one ``meshserve runtime`` (``--allow-pickle``, tree types
trusted for skops, ``MESHSERVE_MODEL_TYPES=sklearn,xgboost,lightgbm``) on loopback and
measures, for a small and a large model of each format (mesh/modelgen_tabular.py):

- ``loadModel`` wall time (median of 3, unloaded between) and the size charged;
- V2 ``ModelInfer`` closed loop, 1 caller, one row, straight to the runtime: p50/p99,
  beside the library's own ``predict`` of the same row in this process;

then the runtime's resident memory with ``--models`` small scikit-learn models
(the iris SVC, as .skops) loaded, 8 loadModel calls in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from load_tests.runtime_bench import grpc_loop, load_many, load_times, rss_of
from mesh import modelgen_tabular as mt
from mesh.etcd_server import LocalEtcd
from mesh.proto.mmesh import model_runtime_pb2 as rpb
from mesh.proto.mmesh import model_runtime_pb2_grpc as rpg
from tests.procs import start_runtime

TREE = "sklearn.tree._tree.Tree"


#: Model label (a valid model id) -> what it is.
DESCRIPTIONS = {
    "sklearn-joblib-small": "iris SVC, .joblib", "sklearn-skops-small": "iris SVC, .skops",
    "sklearn-joblib-large": "random forest, 200 trees, depth 12, .joblib",
    "sklearn-skops-large": "random forest, 200 trees, depth 12, .skops",
    "xgboost-small": "20 trees, depth 4, .json", "xgboost-large": "1000 trees, depth 8, .ubj",
    "lightgbm-small": "20 trees, 15 leaves", "lightgbm-large": "1000 trees, 255 leaves",
}


def write_models(root: Path, small_only: bool = False) -> dict[str, mt.TabularModel]:
    """label -> model: small and large of each format (``small_only``: the iris SVCs)."""
    big_x = {"rows": 20_000, "features": 20}
    small = {
        "sklearn-joblib-small": mt.write_sklearn_iris(root / "svc-joblib"),
        "sklearn-skops-small": mt.write_sklearn_iris(root / "svc-skops", file_name="model.skops"),
    }
    if small_only:
        return small
    return {
        **small,
        "sklearn-joblib-large": mt.write_sklearn(root / "rf.joblib", size="large"),
        "sklearn-skops-large": mt.write_sklearn(root / "rf.skops", size="large"),
        "xgboost-small": mt.write_xgboost(root / "xgb-small.json"),
        "xgboost-large": mt.write_xgboost(root / "xgb-large.ubj", trees=1000, depth=8, **big_x),
        "lightgbm-small": mt.write_lightgbm(root / "lgb-small.txt"),
        "lightgbm-large": mt.write_lightgbm(root / "lgb-large.txt", trees=1000, leaves=255, **big_x),
    }


def library_p50_ms(model: mt.TabularModel, seconds: float) -> float:
    """The library's own predict of one row, in this process."""
    row = model.x[:1]
    if model.model_type == "sklearn":
        file = model.path if model.path.is_file() else next(model.path.iterdir())
        est = mt.load_sklearn(file, [TREE])
        fn = est.predict
    elif model.model_type == "xgboost":
        import xgboost as xgb

        booster = xgb.Booster(params={"nthread": 1}, model_file=str(model.path))
        fn = lambda x: booster.predict(xgb.DMatrix(x, nthread=1))  # noqa: E731 - as the backend calls it
    else:
        import lightgbm as lgb

        lbooster = lgb.Booster(model_file=str(model.path))
        fn = lambda x: lbooster.predict(x, num_threads=1)  # noqa: E731
    for _ in range(50):
        fn(row)
    samples = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        fn(row)
        samples.append(time.perf_counter() - t0)
    return round(statistics.median(samples) * 1e3, 3)


def measure_formats(spi: Any, endpoint: str, models: dict[str, mt.TabularModel], seconds: float,
                    result: dict[str, Any]) -> None:
    for label, model in models.items():
        row: dict[str, Any] = load_times(spi, {label: model.path}, model_type=model.model_type)[label]
        model_id = f"infer-{label}"
        spi.loadModel(rpb.LoadModelRequest(modelId=model_id, modelType=model.model_type,
                                           modelPath=str(model.path)), timeout=300)
        x = np.ascontiguousarray(model.x[:1], dtype=np.float32)
        row["runtime_grpc"] = asyncio.run(grpc_loop(endpoint, model_id, x, seconds, 1))
        row["library_p50_ms"] = library_p50_ms(model, seconds)
        spi.unloadModel(rpb.UnloadModelRequest(modelId=model_id), timeout=60)
        result["formats"][label] = {"model": DESCRIPTIONS[label], **row}
        print(json.dumps({label: result["formats"][label]}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--out", default="load_tests/results/formats")
    ap.add_argument("--many-only", action="store_true", help="only the many-small-models phase")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="formats-bench-"))
    t0 = time.perf_counter()
    models = write_models(tmp / "models", small_only=args.many_only)
    print(f"models written in {time.perf_counter() - t0:.1f}s", flush=True)
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": f"python -m load_tests.formats_bench --seconds {args.seconds} --models {args.models}"
                   + (" --many-only" if args.many_only else ""),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_at_start": os.getloadavg()},
        "formats": {},
    }
    env = {"MESHSERVE_MODEL_TYPES": "sklearn,xgboost,lightgbm", "MESHSERVE_SKOPS_TRUSTED_TYPES": TREE}
    etcd = LocalEtcd(tmp / "etcd")
    etcd.start()
    try:
        if not args.many_only:
            with start_runtime(etcd.endpoint, "bench", capacity="8Gi", env=env, extra_args=["--allow-pickle"]) as rt:
                result["rss_idle_bytes"] = rss_of(rt.pid)
                with grpc.insecure_channel(rt.endpoint) as ch:
                    measure_formats(rpg.ModelRuntimeStub(ch), rt.endpoint, models, args.seconds, result)
                rt.terminate()
        result["many"] = {}
        for label in ("sklearn-skops-small", "sklearn-joblib-small"):  # each in a fresh runtime
            with start_runtime(etcd.endpoint, f"many-{label}", capacity="8Gi", env=env,
                               extra_args=["--allow-pickle"]) as rt:
                with grpc.insecure_channel(rt.endpoint) as ch:  # a .skops load waits for skops' deferred import
                    for path in (models["sklearn-skops-small"].path, models[label].path):
                        rpg.ModelRuntimeStub(ch).loadModel(rpb.LoadModelRequest(
                            modelId=f"warm-{path.name}", modelType="sklearn", modelPath=str(path)), timeout=300)
                before = rss_of(rt.pid)
                took = asyncio.run(load_many(rt.endpoint, models[label].path, args.models, model_type="sklearn"))
                after = rss_of(rt.pid)
                with grpc.insecure_channel(rt.endpoint) as ch:
                    charged = rpg.ModelRuntimeStub(ch).modelSize(rpb.ModelSizeRequest(modelId="many/00000")).sizeInBytes
                result["many"][label] = {
                    "models": args.models, "file": DESCRIPTIONS[label], "load_all_s": round(took, 2),
                    "rss_one_loaded_bytes": before, "rss_after_bytes": after,
                    "rss_per_model_bytes": (after - before) // max(args.models, 1),
                    "charged_per_model_bytes": int(charged)}
                print(json.dumps({"many": {label: result["many"][label]}}), flush=True)
                rt.terminate()
    finally:
        etcd.cleanup()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"formats-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
