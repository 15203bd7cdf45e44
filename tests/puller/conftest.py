"""Fixtures for the puller: real S3 (moto), GCS (fake-gcs-server) and HTTP servers on
127.0.0.1, a storage config pointing at them, and settings with a temporary cache."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from load_tests.storage_servers import FakeGcs, FileServer, MotoS3

from mesh.clock import FakeClock
from puller.fetcher import PullerFetcher
from puller.settings import PullerSettings

BUCKET = "models"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path_factory.mktemp("moto")).start()
    server.admin().create_bucket(Bucket=BUCKET)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcs]:
    server = FakeGcs(tmp_path_factory.mktemp("gcs")).start()
    server.client().create_bucket(BUCKET)
    yield server
    server.stop()


@pytest.fixture
def http_server() -> Iterator[FileServer]:
    server = FileServer()
    yield server
    server.stop()


@pytest.fixture
def storage_config_file(tmp_path: Path) -> Any:
    """Writes a storage config (key -> entry) and returns its path."""

    def write(entries: dict[str, Any]) -> Path:
        path = tmp_path / "storage-config.json"
        path.write_text(json.dumps(entries))
        return path

    return write


@pytest.fixture
def make_settings(tmp_path: Path) -> Any:
    def make(**overrides: Any) -> PullerSettings:
        values: dict[str, Any] = {
            "cache_dir": tmp_path / "cache", "cache_budget": 10 * 2**20, "retry_attempts": 3,
            "retry_backoff_s": 0.01, "retry_backoff_max_s": 0.05, "connect_timeout_s": 2, "read_timeout_s": 5,
            "pvc_root": tmp_path / "pvc",
        }
        values.update(overrides)
        return PullerSettings(**values)

    return make


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_fetcher(make_settings: Any, clock: FakeClock) -> AsyncIterator[Any]:
    fetchers: list[PullerFetcher] = []

    async def make(**overrides: Any) -> PullerFetcher:
        f = PullerFetcher(make_settings(**overrides), clock=clock)
        await f.start()
        fetchers.append(f)
        return f

    yield make
    for f in fetchers:
        await f.close()
