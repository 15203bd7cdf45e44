"""The puller against fake-gcs-server and a local HTTP server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import BUCKET
from load_tests.storage_servers import FakeGcs, FileServer, Route
from tls_support import https_server, self_signed

from mesh.errors import (
    CorruptModel,
    InvalidArgument,
    StorageAccessDenied,
    StorageNotFound,
    StorageUnreachable,
)


def _no_entries(cache_dir: Path) -> None:
    assert list((cache_dir / "tmp").iterdir()) == []
    assert list((cache_dir / "models").iterdir()) == []


async def test_gcs_single_file_and_folder(gcs_server: FakeGcs, make_fetcher: Any, storage_config_file: Any) -> None:
    bucket = gcs_server.client().bucket(BUCKET)
    body = os.urandom(100_000)
    bucket.blob("g/one.onnx").upload_from_string(body)
    bucket.blob("g/dir/a.txt").upload_from_string(b"a")
    bucket.blob("g/dir/sub/b.txt").upload_from_string(b"bb")
    fetcher = await make_fetcher(storage_config=storage_config_file({"gcs": gcs_server.storage_entry()}))
    one = await fetcher.fetch("g1", f"gs://{BUCKET}/g/one.onnx", {"storage_key": "gcs"})
    assert one.path.read_bytes() == body and not one.from_cache
    folder = await fetcher.fetch("g2", f"gs://{BUCKET}/g/dir", {"storage_key": "gcs"})
    assert (folder.path / "a.txt").read_bytes() == b"a" and (folder.path / "sub" / "b.txt").read_bytes() == b"bb"
    with pytest.raises(StorageNotFound):
        await fetcher.fetch("g3", f"gs://{BUCKET}/g/missing", {"storage_key": "gcs"})
    with pytest.raises(StorageNotFound):
        await fetcher.fetch("g4", "gs://no-such-bucket/x.onnx", {"storage_key": "gcs"})


async def test_gcs_unreachable_endpoint_is_reported_after_retries(make_fetcher: Any, storage_config_file: Any) -> None:
    from mesh.etcd_server import free_port

    entry = {"type": "gcs", "endpoint_url": f"http://127.0.0.1:{free_port()}", "anonymous": True}
    fetcher = await make_fetcher(storage_config=storage_config_file({"default": entry}))
    with pytest.raises(StorageUnreachable, match="after 3 attempts"):
        await fetcher.fetch("g5", f"gs://{BUCKET}/x.onnx", {})


async def test_http_file_with_headers_from_the_storage_config(
        http_server: FileServer, make_fetcher: Any, storage_config_file: Any) -> None:
    http_server.routes["/m/model.onnx"] = Route(b"onnx-bytes", require={"Authorization": "Bearer t0ken"})
    config = storage_config_file({"web": {"type": "http", "headers": {"Authorization": "Bearer t0ken"}}})
    fetcher = await make_fetcher(storage_config=config)
    got = await fetcher.fetch("h1", f"{http_server.url}/m/model.onnx", {"storage_key": "web"})
    assert got.path.name == "model.onnx" and got.path.read_bytes() == b"onnx-bytes"
    with pytest.raises(StorageAccessDenied) as e:  # the same file without the header
        await fetcher.fetch("h2", f"{http_server.url}/m/model.onnx", {})
    assert "headers" in str(e.value) and "t0ken" not in str(e.value)
    with pytest.raises(StorageNotFound):
        await fetcher.fetch("h3", f"{http_server.url}/m/nope.onnx", {})
    with pytest.raises(InvalidArgument, match="folder"):
        await fetcher.fetch("h4", f"{http_server.url}/m/", {})


async def test_http_credentials_in_the_url_never_reach_errors(http_server: FileServer, make_fetcher: Any) -> None:
    fetcher = await make_fetcher()
    with pytest.raises(StorageNotFound) as e:
        await fetcher.fetch("h5", f"http://user:hunter2@127.0.0.1:{http_server.port}/x.bin?sig=abc123", {})
    assert "hunter2" not in str(e.value) and "abc123" not in str(e.value)


async def test_http_truncated_body_is_retried_then_corrupt(http_server: FileServer, make_fetcher: Any) -> None:
    route = http_server.routes["/short.bin"] = Route(os.urandom(100_000), send=40_000)
    fetcher = await make_fetcher()
    with pytest.raises(CorruptModel, match="cut short|truncated"):
        await fetcher.fetch("short", f"{http_server.url}/short.bin", {})
    assert route.gets == 3
    _no_entries(fetcher.settings.cache_dir)


async def test_http_server_dying_mid_download(http_server: FileServer, make_fetcher: Any) -> None:
    http_server.routes["/dies.bin"] = Route(os.urandom(100_000), send=30_000, after=http_server.stop_soon)
    fetcher = await make_fetcher()
    with pytest.raises(StorageUnreachable) as e:
        await fetcher.fetch("dies", f"{http_server.url}/dies.bin", {})
    assert f"{http_server.url}/dies.bin" in str(e.value) and "after 3 attempts" in str(e.value)
    _no_entries(fetcher.settings.cache_dir)


async def test_http_5xx_is_transient_and_recovers(http_server: FileServer, make_fetcher: Any) -> None:
    # The first three requests (HEAD or GET) get 503/502/500, then the store recovers.
    route = http_server.routes["/flaky.bin"] = Route(b"x" * 1000, errors=[503, 502, 500])
    fetcher = await make_fetcher(retry_attempts=5)
    got = await fetcher.fetch("flaky", f"{http_server.url}/flaky.bin", {})
    assert got.path.read_bytes() == b"x" * 1000
    assert route.errored == 3 and route.errors == []  # the retries really happened


async def test_http_persistent_5xx_is_storage_unreachable_after_the_attempts(
        http_server: FileServer, make_fetcher: Any) -> None:
    route = http_server.routes["/down.bin"] = Route(b"x", errors=[503] * 10)
    fetcher = await make_fetcher(retry_attempts=3)
    with pytest.raises(StorageUnreachable, match="503") as e:
        await fetcher.fetch("down", f"{http_server.url}/down.bin", {})
    assert "gave up after 3 attempts" in str(e.value) and e.value.retryable
    assert route.errored == 3 and route.gets == 0
    _no_entries(fetcher.settings.cache_dir)


async def test_concurrent_fetches_of_one_model_share_one_download(http_server: FileServer, make_fetcher: Any) -> None:
    route = http_server.routes["/shared.bin"] = Route(os.urandom(500_000))
    fetcher = await make_fetcher()
    results = await asyncio.gather(*(fetcher.fetch("shared", f"{http_server.url}/shared.bin", {}) for _ in range(8)))
    assert route.gets == 1
    assert len({r.path for r in results}) == 1
    assert sum(not r.from_cache for r in results) == 8  # all waited on the one pull


async def test_sha256_in_the_key_is_checked(http_server: FileServer, make_fetcher: Any) -> None:
    import hashlib

    body = b"weights" * 100
    http_server.routes["/w.bin"] = Route(body)
    fetcher = await make_fetcher()
    good = hashlib.sha256(body).hexdigest()
    assert (await fetcher.fetch("s1", f"{http_server.url}/w.bin", {"sha256": good})).path.read_bytes() == body
    with pytest.raises(CorruptModel, match="sha256"):
        await fetcher.fetch("s2", f"{http_server.url}/w.bin", {"sha256": "0" * 64})
    with pytest.raises(InvalidArgument, match="sha256"):
        await fetcher.fetch("s3", f"{http_server.url}/w.bin", {"sha256": "not-hex"})


async def test_tls_is_verified_by_default(tmp_path: Path, make_fetcher: Any, storage_config_file: Any) -> None:
    cert, key = self_signed(tmp_path, "127.0.0.1")
    (tmp_path / "m.bin").write_bytes(b"secure")
    with https_server(tmp_path, cert, key) as base:
        url = f"{base}/m.bin"
        fetcher = await make_fetcher(storage_config=storage_config_file(
            {"tls": {"type": "http", "certificate": cert.read_text()}}))
        with pytest.raises(StorageUnreachable, match=r"TLS failed \(\[SSL: CERTIFICATE_VERIFY_FAILED\]"):
            await fetcher.fetch("tls1", url, {})
        assert (await fetcher.fetch("tls2", url, {"storage_key": "tls"})).path.read_bytes() == b"secure"


def test_an_invalid_gcs_private_key_is_reported_without_showing_it() -> None:
    from puller.backends.gcs import GcsBackend
    from puller.settings import PullerSettings
    from puller.source import resolve_source
    from puller.storage_config import StorageConfig

    pem = "-----BEGIN PRIVATE KEY-----\nnot-really-a-key-but-secret\n-----END PRIVATE KEY-----\n"
    config = StorageConfig({"sa": {"type": "gcs", "client_email": "sa@p.iam.gserviceaccount.com", "private_key": pem}})
    source = resolve_source("gs://b/m.onnx", {"storage_key": "sa"}, config)
    with pytest.raises(StorageAccessDenied, match="private_key") as e:
        GcsBackend(PullerSettings()).list(source)
    assert "not-really-a-key" not in str(e.value)


async def test_pulls_beyond_the_bound_wait_their_turn(http_server: FileServer, make_fetcher: Any) -> None:
    stall = threading.Event()
    a = http_server.routes["/a.bin"] = Route(b"a" * 1000, stall=stall)
    b = http_server.routes["/b.bin"] = Route(b"b" * 1000)
    fetcher = await make_fetcher(max_concurrent_pulls=1)
    first = asyncio.create_task(fetcher.fetch("a", f"{http_server.url}/a.bin", {}))
    second = asyncio.create_task(fetcher.fetch("b", f"{http_server.url}/b.bin", {}))
    while a.gets == 0:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    assert b.gets == 0  # b waits for a's slot
    stall.set()
    assert (await first).path.read_bytes() == b"a" * 1000
    assert (await second).path.read_bytes() == b"b" * 1000


async def test_a_waiter_giving_up_does_not_cancel_the_shared_pull(http_server: FileServer, make_fetcher: Any) -> None:
    stall = threading.Event()
    route = http_server.routes["/m.bin"] = Route(b"m" * 1000, stall=stall)
    fetcher = await make_fetcher()
    impatient = asyncio.create_task(fetcher.fetch("m", f"{http_server.url}/m.bin", {}))
    patient = asyncio.create_task(fetcher.fetch("m", f"{http_server.url}/m.bin", {}))
    while route.gets == 0:
        await asyncio.sleep(0.01)
    impatient.cancel()
    stall.set()
    got = await patient
    assert got.path.read_bytes() == b"m" * 1000 and route.gets == 1
    assert fetcher.cache.pins("m") == 1  # the cancelled waiter's pin was undone
    await fetcher.release("m")
    assert fetcher.cache.pins("m") == 0


async def test_a_server_refusing_head_is_asked_with_get(http_server: FileServer, make_fetcher: Any) -> None:
    route = http_server.routes["/signed.bin"] = Route(b"signed" * 100, head_status=403)
    fetcher = await make_fetcher()
    got = await fetcher.fetch("signed", f"{http_server.url}/signed.bin?X-Amz-Signature=abc", {})
    assert got.path.read_bytes() == b"signed" * 100 and route.gets == 1


async def test_gcs_service_account_from_the_storage_config(
        tmp_path: Path, gcs_server: FakeGcs, http_server: FileServer, make_fetcher: Any,
        storage_config_file: Any) -> None:
    import json

    key = tmp_path / "sa.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key)],
                   check=True, capture_output=True)
    token = http_server.routes["/token"] = Route(json.dumps(
        {"access_token": "tok", "expires_in": 3600, "token_type": "Bearer"}).encode(),
        headers={"Content-Type": "application/json"})
    gcs_server.client().bucket(BUCKET).blob("sa/m.onnx").upload_from_string(b"sa-model")
    entry = {"type": "gcs", "endpoint_url": gcs_server.endpoint, "client_email": "puller@p.iam.gserviceaccount.com",
             "private_key": key.read_text(), "token_uri": f"{http_server.url}/token"}
    fetcher = await make_fetcher(storage_config=storage_config_file({"sa": entry}))
    got = await fetcher.fetch("sa", f"gs://{BUCKET}/sa/m.onnx", {"storage_key": "sa"})
    assert got.path.read_bytes() == b"sa-model"
    assert token.gets >= 1  # the signed JWT was exchanged for a token at the entry's token_uri
