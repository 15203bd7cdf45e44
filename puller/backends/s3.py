"""``s3://bucket/key``: AWS S3 and S3-compatible stores (MinIO, Ceph, IBM COS) via boto3.

The storage entry's ``endpoint_url`` switches to path-style addressing (what
S3-compatible stores expect); ``certificate`` is a PEM CA bundle for a private TLS
endpoint; ``anonymous: true`` sends unsigned requests (public buckets). Without
``access_key_id`` boto3's usual chain applies (environment, IRSA, instance profile).
Objects from ``multipart_threshold`` up are fetched as parallel ranged GETs
(s3transfer, with If-Match on the ETag so parts cannot mix versions); smaller ones as
one streamed GET. The ETag is the version; a single-part ETag is the MD5 of the bytes.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import boto3
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    FlexibleChecksumError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from s3transfer.exceptions import RetriesExceededError
from s3transfer.manager import TransferConfig, TransferManager
from s3transfer.subscribers import BaseSubscriber

from mesh.errors import (
    CorruptModel,
    StorageAccessDenied,
    StorageError,
    StorageNotFound,
    StorageUnreachable,
)
from puller.backends import ClientCache, Listing, ProgressFn, RemoteObject, relative_name
from puller.settings import PullerSettings
from puller.source import Source

_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "AllAccessDisabled",
           "InvalidToken", "ExpiredToken", "AccountProblem"}
_MISSING = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_STREAM_CHUNK = 1 << 20


class _Progress(BaseSubscriber):  # type: ignore[misc]
    def __init__(self, fn: ProgressFn) -> None:
        self._fn = fn

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        self._fn(bytes_transferred)


class _Client:
    """A boto3 client for one storage entry, and its transfer manager for large objects."""

    def __init__(self, source: Source, settings: PullerSettings) -> None:
        spec = source.spec
        get = spec.get if spec else (lambda name, default=None: default)
        endpoint = get("endpoint_url")
        self._ca_file: str | None = None
        verify: str | None = None  # None: botocore's default, which honours AWS_CA_BUNDLE
        if get("certificate"):
            fd, self._ca_file = tempfile.mkstemp(prefix="meshserve-ca-", suffix=".pem")
            with os.fdopen(fd, "w") as f:
                f.write(get("certificate"))
            verify = self._ca_file
        pool = max(settings.object_parallelism, settings.multipart_parallelism) + 4
        config = Config(
            s3={"addressing_style": "path" if endpoint else "auto"},
            retries={"max_attempts": 1, "mode": "standard"},  # the fetcher retries, with backoff
            connect_timeout=settings.connect_timeout_s,
            read_timeout=settings.read_timeout_s,
            max_pool_connections=pool,
            signature_version=UNSIGNED if (spec and spec.flag("anonymous")) else None,
        )
        session = boto3.session.Session()
        self.client = session.client(
            "s3",
            endpoint_url=endpoint,
            region_name=get("region") or "us-east-1",
            aws_access_key_id=get("access_key_id"),
            aws_secret_access_key=get("secret_access_key"),
            verify=verify,
            config=config,
        )
        self.endpoint = endpoint or "AWS S3"
        self.transfers = TransferManager(self.client, TransferConfig(
            multipart_threshold=settings.multipart_threshold,
            multipart_chunksize=settings.multipart_chunk_size,
            max_request_concurrency=settings.multipart_parallelism,
            num_download_attempts=1,
        ))

    def close(self) -> None:
        self.transfers.shutdown()
        self.client.close()
        if self._ca_file:
            Path(self._ca_file).unlink(missing_ok=True)


class S3Backend:
    def __init__(self, settings: PullerSettings) -> None:
        self._settings = settings
        self._clients = ClientCache(lambda source: _Client(source, settings), _Client.close)

    def _client(self, source: Source) -> _Client:
        return self._clients.get(source)

    def list(self, source: Source) -> Listing:
        c = self._client(source)
        key = source.path
        if key and not key.endswith("/"):
            try:
                head = c.client.head_object(Bucket=source.bucket, Key=key)
                return Listing([_object(key, key.rsplit("/", 1)[-1], head["ContentLength"], head["ETag"])], True)
            except ClientError as e:
                if _code(e) not in _MISSING:
                    raise _translate(e, source, c) from None
            except (BotoCoreError, RetriesExceededError) as e:
                raise _translate(e, source, c) from None
            prefix = key + "/"
        else:
            prefix = key
        objects = []
        try:
            for page in c.client.get_paginator("list_objects_v2").paginate(Bucket=source.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    if item["Key"].endswith("/"):
                        continue  # a "directory marker", not content
                    objects.append(_object(item["Key"], relative_name(item["Key"], prefix), item["Size"], item["ETag"]))
        except (ClientError, BotoCoreError) as e:
            raise _translate(e, source, c) from None
        if not objects:
            raise StorageNotFound(
                f"{source.display}: no such object, and no objects under s3://{source.bucket}/{prefix} "
                f"(endpoint {c.endpoint}); check the bucket and path"
            )
        return Listing(objects, False)

    def download(self, source: Source, obj: RemoteObject, dest: Path, progress: ProgressFn) -> None:
        c = self._client(source)
        try:
            if obj.size is not None and obj.size >= self._settings.multipart_threshold:
                future = c.transfers.download(source.bucket, obj.address, str(dest),
                                              subscribers=[_Progress(progress)])
                future.result()
                return
            resp = c.client.get_object(Bucket=source.bucket, Key=obj.address, IfMatch=f'"{obj.version}"')
            with open(dest, "wb") as f:
                for chunk in resp["Body"].iter_chunks(_STREAM_CHUNK):
                    f.write(chunk)
                    progress(len(chunk))
        except (ClientError, BotoCoreError, RetriesExceededError) as e:
            raise _translate(e, source, c, obj.address) from None

    def close(self) -> None:
        self._clients.close()


def _object(key: str, name: str, size: int, etag: str) -> RemoteObject:
    version = etag.strip('"')
    checksum = ("md5", version) if _MD5_ETAG.match(version) else None
    return RemoteObject(key, name, size, version, checksum)


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _translate(e: Exception, source: Source, c: _Client, key: str | None = None) -> StorageError:
    where = f"s3://{source.bucket}/{key}" if key else source.display
    if isinstance(e, RetriesExceededError):
        e = e.last_exception
    if isinstance(e, ClientError):
        code = _code(e)
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _DENIED or status == 403:
            return StorageAccessDenied(
                f"{where}: access denied ({code}) using {source.describe_credentials()} at {c.endpoint}; "
                "check that the entry's access_key_id/secret_access_key are current and allow "
                f"s3:GetObject and s3:ListBucket on bucket {source.bucket!r} (S3 also answers 403 for a "
                "missing object when s3:ListBucket is not granted)"
            )
        if code in _MISSING or status == 404:
            what = "bucket" if code == "NoSuchBucket" else "object"
            return StorageNotFound(f"{where}: no such {what} at {c.endpoint}; check the bucket and path")
        if code == "PreconditionFailed" or status == 412:
            return StorageUnreachable(f"{where}: the object changed during the download; it will be fetched again")
        if status >= 500 or code in ("SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"):
            return StorageUnreachable(f"{where}: storage answered {status} {code} at {c.endpoint}")
        return StorageError(f"{where}: storage refused the request ({status} {code}) at {c.endpoint}")
    if isinstance(e, NoCredentialsError):
        return StorageAccessDenied(
            f"{where}: no credentials found ({source.describe_credentials()}); name a storage_key whose "
            "entry has access_key_id/secret_access_key, or set \"anonymous\": true for a public bucket"
        )
    if isinstance(e, FlexibleChecksumError):
        # The store published a checksum (x-amz-checksum-*) and botocore found the bytes differ.
        return CorruptModel(f"{where}: the bytes received do not match the checksum {c.endpoint} published "
                            f"({e}); corrupted in transit or in storage", retryable=True)
    if isinstance(e, (IncompleteReadError, ResponseStreamingError)):
        return CorruptModel(f"{where}: the download was cut short by {c.endpoint} ({type(e).__name__})",
                            retryable=True)
    if isinstance(e, (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError, BotoConnectionError)):
        return StorageUnreachable(f"{where}: cannot reach {c.endpoint} ({type(e).__name__})")
    return StorageUnreachable(f"{where}: {type(e).__name__} talking to {c.endpoint}")
