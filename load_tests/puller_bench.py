"""Puller benchmark: pull throughput against plain boto3, and cached-model serve time.

    python -m load_tests.puller_bench [--big-mb 500] [--small 1000] [--small-kb 70] [--rounds 2] [--out DIR]

Starts its own moto S3 server on loopback (IAM auth on, as in the tests) and uploads
one large object and a folder of small ones. Then, alternating rounds so both see the
same server state:

- one large object: ``PullerFetcher.fetch`` into an empty cache vs boto3's
  ``download_file`` (its default transfer config: 8 MB parts, 10 threads), and
  ``download_file`` with the puller's part size and parallelism (16 MiB, 8) as a control;
- the folder: ``fetch`` of the prefix vs a plain boto3 loop (list, then
  ``download_file`` per object, one after another); a 16-thread boto3 pool is
  reported beside it for context;
- serving a cached model: ``fetch`` of a model already on disk (warm process), and a
  fresh process's ``start()`` + first ``fetch`` (the cache index read from disk).

Each figure is the best of ``--rounds``. Large temporary files are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from load_tests.harness import save_json
from load_tests.storage_servers import MotoS3
from puller.fetcher import PullerFetcher
from puller.settings import PullerSettings

BUCKET = "bench"


def _upload(s3: MotoS3, work: Path, big_mb: int, small: int, small_kb: int) -> None:
    client = s3.admin()
    client.create_bucket(Bucket=BUCKET)
    big = work / "big.bin"
    with open(big, "wb") as f:
        for _ in range(big_mb):
            f.write(os.urandom(2**20))
    client.upload_file(str(big), BUCKET, "big/weights.bin")  # multipart, as `aws s3 cp` would
    big.unlink()
    body = os.urandom(small_kb * 1000)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: client.put_object(Bucket=BUCKET, Key=f"folder/part-{i:05d}.bin",
                                                  Body=body[i % 97:] + body[:i % 97]), range(small)))


def _boto3_big(s3: MotoS3, dest: Path, like: PullerSettings | None = None) -> float:
    """boto3's download_file; with ``like``, using the puller's part size and parallelism."""
    from boto3.s3.transfer import TransferConfig

    client = s3.admin()
    config = TransferConfig(multipart_chunksize=like.multipart_chunk_size,
                            max_concurrency=like.multipart_parallelism) if like else None
    t0 = time.perf_counter()
    client.download_file(BUCKET, "big/weights.bin", str(dest / "weights.bin"), Config=config)
    return time.perf_counter() - t0


def _boto3_folder(s3: MotoS3, dest: Path, threads: int) -> float:
    client = s3.admin()
    t0 = time.perf_counter()
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="folder/")
            for o in page.get("Contents", [])]

    def one(key: str) -> None:
        client.download_file(BUCKET, key, str(dest / key.rsplit("/", 1)[-1]))

    if threads == 1:
        for k in keys:
            one(k)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, keys))
    return time.perf_counter() - t0


async def _puller(settings: PullerSettings, model_id: str, uri: str) -> tuple[float, int]:
    async with PullerFetcher(settings) as fetcher:
        t0 = time.perf_counter()
        got = await fetcher.fetch(model_id, uri, {})
        return time.perf_counter() - t0, got.size_bytes


async def _cached(settings: PullerSettings, model_id: str, uri: str, n: int) -> dict[str, float]:
    t0 = time.perf_counter()
    fetcher = PullerFetcher(settings)
    await fetcher.start()
    got = await fetcher.fetch(model_id, uri, {})
    cold = time.perf_counter() - t0
    assert got.from_cache
    times = []
    for _ in range(n):
        t = time.perf_counter()
        await fetcher.fetch(model_id, uri, {})
        times.append(time.perf_counter() - t)
        await fetcher.release(model_id)
    await fetcher.close()
    return {"fresh_process_start_and_fetch_ms": cold * 1000, "warm_fetch_median_ms": statistics.median(times) * 1000,
            "warm_fetch_p99_ms": sorted(times)[int(0.99 * (n - 1))] * 1000}


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


async def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    s3 = MotoS3(work).start()
    try:
        t0 = time.perf_counter()
        _upload(s3, work, args.big_mb, args.small, args.small_kb)
        print(f"uploaded in {time.perf_counter() - t0:.1f}s", flush=True)
        config = work / "storage-config.json"
        config.write_text(json.dumps({"default": s3.storage_entry()}))
        rows: dict[str, list[float]] = {k: [] for k in ("big_boto3", "big_boto3_puller_parts", "big_puller",
                                                         "folder_boto3_seq",
                                                         "folder_boto3_16", "folder_puller")}
        big_bytes = folder_bytes = 0
        for r in range(args.rounds):
            settings = PullerSettings(cache_dir=_fresh(work / "cache"), cache_budget=4 * 2**30, storage_config=config)
            rows["big_boto3"].append(_boto3_big(s3, _fresh(work / "plain")))
            rows["big_boto3_puller_parts"].append(_boto3_big(s3, _fresh(work / "plain"), settings))
            shutil.rmtree(work / "plain")
            secs, big_bytes = await _puller(settings, "bench/big", f"s3://{BUCKET}/big/weights.bin")
            rows["big_puller"].append(secs)
            settings = PullerSettings(cache_dir=_fresh(work / "cache"), cache_budget=4 * 2**30, storage_config=config)
            rows["folder_boto3_seq"].append(_boto3_folder(s3, _fresh(work / "plain"), 1))
            rows["folder_boto3_16"].append(_boto3_folder(s3, _fresh(work / "plain"), 16))
            secs, folder_bytes = await _puller(settings, "bench/folder", f"s3://{BUCKET}/folder/")
            rows["folder_puller"].append(secs)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in rows.items()), flush=True)
        cached = await _cached(settings, "bench/folder", f"s3://{BUCKET}/folder/", 200)
    finally:
        s3.stop()
    best = {k: min(v) for k, v in rows.items()}
    mbps = lambda n, s: n / s / 1e6  # noqa: E731
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "args": vars(args),
        "seconds_best_of_rounds": best,
        "seconds_all_rounds": rows,
        "big_object": {"bytes": big_bytes, "puller_MBps": mbps(big_bytes, best["big_puller"]),
                       "boto3_MBps": mbps(big_bytes, best["big_boto3"]),
                       "ratio_puller_to_boto3": best["big_boto3"] / best["big_puller"],
                       "boto3_with_puller_part_size_MBps": mbps(big_bytes, best["big_boto3_puller_parts"]),
                       "ratio_puller_to_boto3_with_puller_part_size":
                           best["big_boto3_puller_parts"] / best["big_puller"]},
        "folder": {"objects": args.small, "bytes": folder_bytes,
                   "puller_MBps": mbps(folder_bytes, best["folder_puller"]),
                   "boto3_sequential_MBps": mbps(folder_bytes, best["folder_boto3_seq"]),
                   "boto3_16_threads_MBps": mbps(folder_bytes, best["folder_boto3_16"]),
                   "ratio_puller_to_boto3_sequential": best["folder_boto3_seq"] / best["folder_puller"],
                   "ratio_puller_to_boto3_16_threads": best["folder_boto3_16"] / best["folder_puller"]},
        "cached_serve": cached,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big-mb", type=int, default=500, help="size of the large object, MiB")
    ap.add_argument("--small", type=int, default=1000, help="objects in the folder")
    ap.add_argument("--small-kb", type=int, default=70, help="size of each small object, kB")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="load_tests/results/puller")
    ap.add_argument("--work-dir", default=None, help="scratch space (default: a temporary directory)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="puller-bench-", dir=args.work_dir))
    try:
        result = asyncio.run(bench(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save_json(Path(args.out), result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
