"""The puller against moto's S3 server (IAM auth on): files, folders, credentials,
403/404, a store dying mid-download, truncated bodies, the cache with the store gone."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import BUCKET
from load_tests.storage_servers import CutProxy, MotoS3

from mesh.errors import CorruptModel, StorageAccessDenied, StorageNotFound, StorageUnreachable
from puller.fetcher import PullerFetcher


def _put(s3: MotoS3, key: str, body: bytes) -> None:
    s3.admin().put_object(Bucket=BUCKET, Key=key, Body=body)


def _cache_is_clean(cache_dir: Path) -> None:
    assert list((cache_dir / "tmp").iterdir()) == []
    assert list((cache_dir / "models").iterdir()) == []


async def test_single_file_with_credentials_from_the_storage_config(
        s3_server: MotoS3, make_fetcher: Any, storage_config_file: Any) -> None:
    body = os.urandom(70_000)
    _put(s3_server, "single/model.onnx", body)
    config = storage_config_file({"minio": s3_server.storage_entry()})
    fetcher = await make_fetcher(storage_config=config)
    got = await fetcher.fetch("team/model:1", f"s3://{BUCKET}/single/model.onnx", {"storage_key": "minio"})
    assert got.path.name == "model.onnx" and got.path.read_bytes() == body
    assert got.size_bytes == len(body) and not got.from_cache
    again = await fetcher.fetch("team/model:1", f"s3://{BUCKET}/single/model.onnx", {"storage_key": "minio"})
    assert again.from_cache and again.path == got.path


async def test_folder_with_and_without_trailing_slash(
        s3_server: MotoS3, make_fetcher: Any, storage_config_file: Any) -> None:
    files = {"config.pbtxt": b"name: 'm'", "1/model.onnx": os.urandom(5000), "1/extra/vocab.txt": b"a\nb\n"}
    for name, body in files.items():
        _put(s3_server, f"folder/m/{name}", body)
    _put(s3_server, "folder/m-other/x.bin", b"not part of m")  # a sibling sharing the prefix "folder/m"
    fetcher = await make_fetcher(storage_config=storage_config_file({"default": s3_server.storage_entry()}))
    for model_id, uri in (("f1", f"s3://{BUCKET}/folder/m/"), ("f2", f"s3://{BUCKET}/folder/m")):
        got = await fetcher.fetch(model_id, uri, {})  # the "default" entry applies
        assert got.path.is_dir()
        found = {p.relative_to(got.path).as_posix(): p.read_bytes() for p in got.path.rglob("*") if p.is_file()}
        assert found == files
        assert got.size_bytes == sum(len(b) for b in files.values())


async def test_modelmesh_style_path_in_the_keys_default_bucket(
        s3_server: MotoS3, make_fetcher: Any, storage_config_file: Any) -> None:
    _put(s3_server, "mm/model.pt", b"torchscript")
    config = storage_config_file({"store": s3_server.storage_entry(default_bucket="nope"),
                                  "other": {"type": "gcs", "anonymous": True}})
    fetcher = await make_fetcher(storage_config=config)
    got = await fetcher.fetch("mm", "mm/model.pt", {"storage_key": "store", "storage_params": {"bucket": BUCKET}})
    assert got.path.read_bytes() == b"torchscript"


async def test_large_object_is_fetched_as_parallel_ranges_and_checked(
        s3_server: MotoS3, make_fetcher: Any, storage_config_file: Any) -> None:
    body = os.urandom(3 * 2**20 + 123)
    _put(s3_server, "big/weights.bin", body)
    fetcher = await make_fetcher(storage_config=storage_config_file({"default": s3_server.storage_entry()}),
                                 multipart_threshold=2**20, multipart_chunk_size=512 * 1024)
    seen: list[tuple[int, int]] = []
    got = await fetcher.fetch("big", f"s3://{BUCKET}/big/weights.bin", {}, progress=lambda d, t: seen.append((d, t)))
    assert hashlib.sha256(got.path.read_bytes()).digest() == hashlib.sha256(body).digest()
    assert seen and seen[-1] == (len(body), len(body))


async def test_wrong_or_unprivileged_keys_get_access_denied_without_leaking_secrets(
        s3_server: MotoS3, make_fetcher: Any, storage_config_file: Any, caplog: pytest.LogCaptureFixture) -> None:
    _put(s3_server, "private/m.bin", b"x")
    bad_secret = "sEcReT-that-must-not-leak-0123456789"
    config = storage_config_file({
        "nobody": s3_server.storage_entry(s3_server.nobody),
        "wrong": {**s3_server.storage_entry(), "secret_access_key": bad_secret},
    })
    fetcher = await make_fetcher(storage_config=config)
    caplog.set_level(logging.DEBUG)
    for key_name in ("nobody", "wrong"):
        with pytest.raises(StorageAccessDenied) as e:
            await fetcher.fetch(f"p-{key_name}", f"s3://{BUCKET}/private/m.bin", {"storage_key": key_name})
        assert f"storage key {key_name!r}" in str(e.value) and "access_key_id" in str(e.value)
        assert not e.value.retryable
    secrets = (bad_secret, s3_server.nobody.secret_access_key, s3_server.reader.secret_access_key)
    assert not any(s in caplog.text for s in secrets)
    assert not any(s in str(e.value) for s in secrets)


async def test_missing_object_or_bucket_is_not_found(
        s3_server: MotoS3, make_fetcher: Any, storage_config_file: Any) -> None:
    fetcher = await make_fetcher(storage_config=storage_config_file({"default": s3_server.storage_entry()}))
    with pytest.raises(StorageNotFound, match="no such object"):
        await fetcher.fetch("gone", f"s3://{BUCKET}/does/not/exist.onnx", {})
    with pytest.raises(StorageNotFound, match="bucket"):
        await fetcher.fetch("gone2", "s3://no-such-bucket/m.onnx", {})
    _cache_is_clean(fetcher.settings.cache_dir)


async def test_store_dying_mid_download_retries_then_fails_cleanly(
        s3_server: MotoS3, make_fetcher: Any, storage_config_file: Any) -> None:
    _put(s3_server, "dying/m.bin", os.urandom(200_000))
    proxy = CutProxy(s3_server.port, cut_after=30_000, die_after_cut=True)
    entry = {**s3_server.storage_entry(), "endpoint_url": proxy.endpoint}
    fetcher = await make_fetcher(storage_config=storage_config_file({"default": entry}))
    with pytest.raises(StorageUnreachable) as e:
        await fetcher.fetch("dying", f"s3://{BUCKET}/dying/m.bin", {})
    assert f"s3://{BUCKET}/dying/m.bin" in str(e.value) and "after 3 attempts" in str(e.value)
    assert proxy.cuts == 1
    _cache_is_clean(fetcher.settings.cache_dir)


async def test_truncated_bodies_are_retried_then_reported_corrupt(
        s3_server: MotoS3, make_fetcher: Any, storage_config_file: Any) -> None:
    _put(s3_server, "short/m.bin", os.urandom(200_000))
    proxy = CutProxy(s3_server.port, cut_after=50_000)  # every response ends early
    entry = {**s3_server.storage_entry(), "endpoint_url": proxy.endpoint}
    fetcher = await make_fetcher(storage_config=storage_config_file({"default": entry}))
    with pytest.raises(CorruptModel, match="cut short|truncated"):
        await fetcher.fetch("short", f"s3://{BUCKET}/short/m.bin", {})
    assert proxy.cuts >= 3
    _cache_is_clean(fetcher.settings.cache_dir)
    proxy.stop()


async def test_cached_model_is_served_with_the_store_stopped_after_a_restart(
        tmp_path: Path, make_settings: Any, storage_config_file: Any) -> None:
    s3 = MotoS3(tmp_path).start()
    try:
        s3.admin().create_bucket(Bucket="own")
        s3.admin().put_object(Bucket="own", Key="m/a.bin", Body=b"a" * 1000)
        s3.admin().put_object(Bucket="own", Key="m/b.bin", Body=b"b" * 10)
        settings = make_settings(storage_config=storage_config_file({"default": s3.storage_entry()}))
        async with PullerFetcher(settings) as fetcher:
            first = await fetcher.fetch("cached", "s3://own/m/", {})
            assert not first.from_cache
    finally:
        s3.stop()
    async with PullerFetcher(settings) as fetcher:  # a new process: the index comes from disk
        again = await fetcher.fetch("cached", "s3://own/m/", {})
    assert again.from_cache and again.path == first.path and again.size_bytes == 1010
    assert (again.path / "a.bin").read_bytes() == b"a" * 1000
