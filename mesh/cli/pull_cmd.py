"""`meshserve pull`: fetch a model into the disk cache ahead of time (pre-warm).

Run it with the model id the model is registered under (the cache is keyed by id)
and the runtime's cache directory, e.g. in an init container. Prints the local path
on stdout; a progress bar on a terminal (plain lines otherwise) on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from typing import Any, TextIO

from mesh.cli.common import build_settings, setup_logging
from mesh.errors import InvalidArgument

HELP = "fetch a model from storage into the local disk cache (pre-warm)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("uri", help="s3://bucket/key, gs://bucket/key, http(s)://..., pvc://NAME/path, file:// or a path")
    p.add_argument("--model-id", help="the id the model is registered under (the cache is keyed by it); "
                                      "default: derived from the URI")
    p.add_argument("--cache-dir", help="disk cache directory (env MESHSERVE_CACHE_DIR)")
    p.add_argument("--cache-budget", help="bytes the cache may hold, e.g. 50Gi (env MESHSERVE_CACHE_BUDGET)")
    p.add_argument("--storage-config", help="ModelMesh storage-config JSON file or Secret directory "
                                            "(env MESHSERVE_STORAGE_CONFIG)")
    p.add_argument("--key", help='the model key JSON, e.g. \'{"storage_key": "minio"}\'')
    p.add_argument("--verbose", action="store_true", help="log retries and cache decisions")


def model_id_from_uri(uri: str) -> str:
    """A valid model id made from a URI (``s3://b/m/`` -> ``s3/b/m``)."""
    from puller.source import redact_uri

    text = re.sub(r"[^A-Za-z0-9._:@+=/-]", "_", redact_uri(uri).replace("://", "/"))
    text = re.sub(r"/{2,}", "/", text.replace("..", "_")).strip("/")
    return text[-256:].lstrip("/") or "model"


class ProgressPrinter:
    """A bar on a terminal; a line every few seconds otherwise (logs, CI)."""

    def __init__(self, out: TextIO, every_s: float = 2.0) -> None:
        self._out = out
        self._tty = out.isatty()
        self._every = every_s
        self._start = time.monotonic()
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        rate = done / max(now - self._start, 1e-6) / 1e6
        if self._tty:
            frac = done / total if total else 0.0
            bar = "#" * int(frac * 30)
            self._out.write(f"\r[{bar:<30}] {frac:6.1%} {done / 1e6:,.1f}/{total / 1e6:,.1f} MB {rate:,.1f} MB/s")
            self._out.flush()
        elif now - self._last >= self._every or (total and done >= total):
            self._last = now
            self._out.write(f"pulled {done:,} of {total:,} bytes ({rate:,.1f} MB/s)\n")

    def finish(self) -> None:
        if self._tty:
            self._out.write("\n")


def run(args: argparse.Namespace) -> int:
    from puller.fetcher import PullerFetcher
    from puller.settings import PullerSettings

    setup_logging("INFO" if args.verbose else "WARNING")
    try:
        key: Any = json.loads(args.key) if args.key else {}
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"--key is not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(key, dict):
        raise InvalidArgument("--key must be a JSON object, e.g. '{\"storage_key\": \"minio\"}'")
    settings = build_settings(PullerSettings, argparse.Namespace(
        cache_dir=args.cache_dir, cache_budget=args.cache_budget, storage_config=args.storage_config))
    model_id = args.model_id or model_id_from_uri(args.uri)
    printer = ProgressPrinter(sys.stderr)

    async def pull() -> int:
        async with PullerFetcher(settings) as fetcher:
            try:
                model = await fetcher.fetch(model_id, args.uri, key, progress=printer)
            finally:
                printer.finish()
            await fetcher.release(model_id)
        how = "already cached" if model.from_cache else "pulled"
        print(f"{model_id}: {how}, {model.size_bytes:,} bytes", file=sys.stderr)
        print(model.path)
        return 0

    return asyncio.run(pull())
