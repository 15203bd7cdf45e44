"""Bytes corrupted in transit are refused (S3 ETag as MD5, GCS MD5 / CRC32C), and large
S3 objects really come as parallel ranged GETs.

A proxy between the puller and the real store (moto, fake-gcs-server) rewrites bytes
of the body without changing its length, so only a checksum can catch it.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from conftest import BUCKET
from load_tests.storage_servers import CutProxy, FakeGcs, MotoS3

from mesh.errors import CorruptModel
from puller.pull import file_digest
from puller.settings import PullerSettings

GOOD, BAD = b"GOOD-WEIGHTS-", b"BAD!-WEIGHTS-"
BODY = GOOD * 4000  # ~52 KB, the marker everywhere: whatever the chunking, some of it is rewritten


def _no_entries(cache_dir: Path) -> None:
    assert list((cache_dir / "tmp").iterdir()) == []
    assert list((cache_dir / "models").iterdir()) == []


def _put_without_checksum(s3: MotoS3, key: str, body: bytes) -> None:
    """An object stored with no x-amz-checksum-* (older clients, most S3-compatible stores):
    the single-part ETag (its MD5) is the only check there is."""
    creds = s3.storage_entry()
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1",
                          aws_access_key_id=creds["access_key_id"], aws_secret_access_key=creds["secret_access_key"],
                          config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required"))
    client.put_object(Bucket=BUCKET, Key=key, Body=body)
    assert "ChecksumCRC32" not in client.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")


async def test_s3_single_part_etag_is_checked_as_md5(
        s3_server: MotoS3, make_fetcher: Any, storage_config_file: Any) -> None:
    _put_without_checksum(s3_server, "tampered/m.bin", BODY)
    proxy = CutProxy(s3_server.port, tamper=(GOOD, BAD))
    try:
        entry = {**s3_server.storage_entry(), "endpoint_url": proxy.endpoint}
        fetcher = await make_fetcher(storage_config=storage_config_file({"default": entry}))
        with pytest.raises(CorruptModel) as e:
            await fetcher.fetch("tampered", f"s3://{BUCKET}/tampered/m.bin", {})
        assert f"md5 is {hashlib.md5(BODY.replace(GOOD, BAD)).hexdigest()}" in str(e.value)
        assert f"storage says {hashlib.md5(BODY).hexdigest()}" in str(e.value)
        assert proxy.tampered > 0
        _no_entries(fetcher.settings.cache_dir)
        proxy.tamper = None  # the same path, bytes intact: accepted
        assert (await fetcher.fetch("tampered", f"s3://{BUCKET}/tampered/m.bin", {})).path.read_bytes() == BODY
    finally:
        proxy.stop()


async def test_gcs_md5_is_checked(tmp_path: Path, make_fetcher: Any, storage_config_file: Any) -> None:
    gcs = FakeGcs(tmp_path)
    proxy = CutProxy(gcs.port, tamper=(GOOD, BAD))
    gcs.external_url = proxy.endpoint  # media links (downloads) go through the proxy too
    gcs.start()
    try:
        bucket = gcs.client().create_bucket(BUCKET)
        bucket.blob("tampered/m.bin").upload_from_string(BODY)
        entry = {**gcs.storage_entry(), "endpoint_url": proxy.endpoint}
        fetcher = await make_fetcher(storage_config=storage_config_file({"default": entry}))
        with pytest.raises(CorruptModel, match="md5|checksum|hash"):
            await fetcher.fetch("g-tampered", f"gs://{BUCKET}/tampered/m.bin", {})
        assert proxy.tampered > 0
        _no_entries(fetcher.settings.cache_dir)
        proxy.tamper = None
        got = await fetcher.fetch("g-tampered", f"gs://{BUCKET}/tampered/m.bin", {})
        assert got.path.read_bytes() == BODY
    finally:
        proxy.stop()
        gcs.stop()


async def test_s3_published_checksum_mismatch_is_corrupt_not_unreachable(
        s3_server: MotoS3, make_fetcher: Any, storage_config_file: Any) -> None:
    s3_server.admin().put_object(Bucket=BUCKET, Key="tampered/crc.bin", Body=BODY)  # boto3 stores a CRC32
    proxy = CutProxy(s3_server.port, tamper=(GOOD, BAD))
    try:
        entry = {**s3_server.storage_entry(), "endpoint_url": proxy.endpoint}
        fetcher = await make_fetcher(storage_config=storage_config_file({"default": entry}))
        with pytest.raises(CorruptModel, match="do not match the checksum") as e:
            await fetcher.fetch("crc", f"s3://{BUCKET}/tampered/crc.bin", {})
        assert "gave up after 3 attempts" in str(e.value)
        _no_entries(fetcher.settings.cache_dir)
    finally:
        proxy.stop()


def test_crc32c_digest_matches_the_published_check_value(tmp_path: Path) -> None:
    # RFC 3720 B.4: CRC32C("123456789") = 0xE3069283. GCS publishes it for composite
    # objects (no MD5); the puller compares this digest with it.
    f = tmp_path / "check"
    f.write_bytes(b"123456789")
    assert file_digest(f, "crc32c") == "e3069283"
    f.write_bytes(b"123456780")
    assert file_digest(f, "crc32c") != "e3069283"


def _ranges(proxy: CutProxy, size: int) -> list[tuple[int, int]]:
    """The byte ranges clients asked for (an open end means: to the end of the object)."""
    sent = b"".join(proxy.requests).decode("latin-1")
    found = re.findall(r"(?i)range: bytes=(\d+)-(\d*)", sent)
    return sorted((int(a), int(b) if b else size - 1) for a, b in found)


def test_ranged_gets_start_at_64_mib_by_default() -> None:
    assert PullerSettings().multipart_threshold == 64 * 2**20


async def test_objects_from_the_threshold_up_come_as_parallel_ranged_gets(
        s3_server: MotoS3, make_fetcher: Any, storage_config_file: Any) -> None:
    big = bytes(range(256)) * (6 * 1024) + b"tail"  # 1.5 MiB + 4 bytes
    small = b"s" * (512 * 1024)
    s3_server.admin().put_object(Bucket=BUCKET, Key="ranged/big.bin", Body=big)
    s3_server.admin().put_object(Bucket=BUCKET, Key="ranged/small.bin", Body=small)
    proxy = CutProxy(s3_server.port)
    try:
        entry = {**s3_server.storage_entry(), "endpoint_url": proxy.endpoint}
        fetcher = await make_fetcher(storage_config=storage_config_file({"default": entry}),
                                     multipart_threshold=2**20, multipart_chunk_size=256 * 1024)
        got = await fetcher.fetch("small", f"s3://{BUCKET}/ranged/small.bin", {})
        assert got.path.read_bytes() == small and _ranges(proxy, len(small)) == []  # below the threshold: one GET
        got = await fetcher.fetch("big", f"s3://{BUCKET}/ranged/big.bin", {})
        assert got.path.read_bytes() == big
        ranges = _ranges(proxy, len(big))
        assert len(ranges) == 7  # ceil(1.5 MiB + 4 / 256 KiB)
        assert ranges[0][0] == 0 and ranges[-1][1] == len(big) - 1
        assert all(nxt[0] == cur[1] + 1 for cur, nxt in zip(ranges, ranges[1:]))  # contiguous, no overlap
    finally:
        proxy.stop()
