"""The puller's metrics hook (mesh.fetcher.PullObserver): pulls, bytes, durations,
disk-cache hits and failures, reported to whatever the runtime passes in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mesh.errors import StorageNotFound
from puller.fetcher import PullerFetcher


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def pulled(self, scheme: str, size_bytes: int, seconds: float) -> None:
        self.events.append(("pulled", scheme, size_bytes))

    def pull_failed(self, scheme: str, code: str, seconds: float) -> None:
        self.events.append(("failed", scheme, code))

    def cache_hit(self) -> None:
        self.events.append(("hit",))


async def test_observer_sees_pulls_cache_hits_and_failures(tmp_path: Path, make_settings: Any) -> None:
    src = tmp_path / "m.bin"
    src.write_bytes(b"x" * 5000)
    recorder = Recorder()
    fetcher = PullerFetcher(make_settings(), observer=recorder)
    try:
        await fetcher.fetch("m", str(src), {})
        await fetcher.release("m")
        await fetcher.fetch("m", str(src), {})  # from the disk cache: storage not contacted
        with pytest.raises(StorageNotFound):
            await fetcher.fetch("gone", str(tmp_path / "missing.bin"), {})
    finally:
        await fetcher.close()
    assert recorder.events == [("pulled", "file", 5000), ("hit",), ("failed", "file", "NOT_FOUND")]
