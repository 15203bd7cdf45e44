"""A load cancelled while the puller is still opening its cache must not leave the
directory looking "in use" to the next load of the same process (seen in CI: a 20 ms
loadModel deadline cancelled the first fetch mid-start)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from puller.fetcher import PullerFetcher


async def test_a_start_cancelled_midway_leaves_the_cache_usable(tmp_path: Path, make_settings: Any) -> None:
    src = tmp_path / "m.bin"
    src.write_bytes(b"x" * 1000)
    fetcher = PullerFetcher(make_settings())
    try:
        for _ in range(20):  # cancel at once, after one loop turn, ...: wherever the start is then
            first = asyncio.create_task(fetcher.fetch("m", str(src), {}))
            await asyncio.sleep(0)
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
        got = await fetcher.fetch("m", str(src), {})
        assert got.path.read_bytes() == b"x" * 1000
    finally:
        await fetcher.close()
