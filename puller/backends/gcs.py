"""``gs://bucket/key``: Google Cloud Storage via google-cloud-storage.

Credentials from the storage entry as in ModelMesh (``client_email`` + ``private_key``,
optional ``token_uri``: a service account), else ``anonymous: true`` (public
buckets, emulators), else Application Default Credentials. ``endpoint_url`` points
the client at another GCS-compatible endpoint (an emulator). The object's generation
is its version; its MD5 (CRC32C for composite objects) is checked after download.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

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

_CHUNK = 1 << 20


class GcsBackend:
    def __init__(self, settings: PullerSettings) -> None:
        self._settings = settings
        self._clients: ClientCache[Any] = ClientCache(_make_client, lambda client: client.close())

    def _client(self, source: Source) -> Any:
        return self._clients.get(source)

    def _timeout(self) -> tuple[float, float]:
        return (self._settings.connect_timeout_s, self._settings.read_timeout_s)

    def list(self, source: Source) -> Listing:
        client = self._client(source)
        key = source.path
        try:
            if key and not key.endswith("/"):
                blob = client.bucket(source.bucket).get_blob(key, timeout=self._timeout(), retry=None)
                if blob is not None:
                    return Listing([_object(blob, key.rsplit("/", 1)[-1])], True)
                prefix = key + "/"
            else:
                prefix = key
            objects = [
                _object(b, relative_name(b.name, prefix))
                for b in client.list_blobs(source.bucket, prefix=prefix, timeout=self._timeout(), retry=None)
                if not b.name.endswith("/")
            ]
        except Exception as e:
            raise _translate(e, source) from None
        if not objects:
            raise StorageNotFound(
                f"{source.display}: no such object, and no objects under gs://{source.bucket}/{prefix}; "
                "check the bucket and path"
            )
        return Listing(objects, False)

    def download(self, source: Source, obj: RemoteObject, dest: Path, progress: ProgressFn) -> None:
        client = self._client(source)
        blob = client.bucket(source.bucket).blob(obj.address, generation=int(obj.version))
        try:
            # Pinned to the listed generation: a newer upload cannot slip in mid-pull.
            with blob.open("rb", chunk_size=8 * _CHUNK, timeout=self._timeout(), retry=None) as src, \
                    open(dest, "wb") as f:
                while chunk := src.read(_CHUNK):
                    f.write(chunk)
                    progress(len(chunk))
        except Exception as e:
            raise _translate(e, source, obj.address) from None

    def close(self) -> None:
        self._clients.close()


def _make_client(source: Source) -> Any:
    from google.cloud import storage

    spec = source.spec
    options = {"api_endpoint": spec.get("endpoint_url")} if spec and spec.get("endpoint_url") else None
    project = spec.get("project_id") if spec else None
    if spec and spec.get("private_key") and spec.get("client_email"):
        from google.oauth2 import service_account

        info = {"type": "service_account", "client_email": spec.get("client_email"),
                "private_key": spec.get("private_key"),
                "token_uri": spec.get("token_uri") or "https://oauth2.googleapis.com/token"}
        try:
            creds = service_account.Credentials.from_service_account_info(
                info, scopes=["https://www.googleapis.com/auth/devstorage.read_only"])
        except (ValueError, KeyError):
            # Never show the key material: say which entry and field to fix.
            raise StorageAccessDenied(
                f"{source.describe_credentials()}: private_key is not a valid PEM service-account key"
            ) from None
        return storage.Client(project=project or "-", credentials=creds, client_options=options)
    if spec and spec.flag("anonymous"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project or "-", credentials=AnonymousCredentials(), client_options=options)
    try:
        return storage.Client(project=project, client_options=options)
    except Exception as e:  # google.auth.exceptions.DefaultCredentialsError and friends
        raise StorageAccessDenied(
            f"{source.display}: no GCS credentials ({type(e).__name__}); name a storage_key whose entry has "
            "client_email and private_key, or set \"anonymous\": true for a public bucket"
        ) from None


def _object(blob: Any, name: str) -> RemoteObject:
    checksum = None
    if blob.md5_hash:
        checksum = ("md5", base64.b64decode(blob.md5_hash).hex())
    elif blob.crc32c:
        checksum = ("crc32c", base64.b64decode(blob.crc32c).hex())
    return RemoteObject(blob.name, name, blob.size, str(blob.generation), checksum)


def _translate(e: Exception, source: Source, key: str | None = None) -> StorageError:
    import requests
    from google.api_core import exceptions as gexc

    where = f"gs://{source.bucket}/{key}" if key else source.display
    if isinstance(e, StorageError):
        return e
    if isinstance(e, (gexc.Forbidden, gexc.Unauthorized)):
        return StorageAccessDenied(
            f"{where}: access denied using {source.describe_credentials()}; check that the service "
            f"account (client_email) has storage.objects.get and storage.objects.list on bucket {source.bucket!r}"
        )
    if isinstance(e, gexc.NotFound):
        return StorageNotFound(f"{where}: no such bucket or object; check the bucket and path")
    if isinstance(e, (gexc.ServerError, gexc.TooManyRequests)):
        return StorageUnreachable(f"{where}: storage answered {getattr(e, 'code', '')} {type(e).__name__}")
    if isinstance(e, requests.exceptions.ChunkedEncodingError):
        return CorruptModel(f"{where}: the download was cut short", retryable=True)
    if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError, TimeoutError)):
        return StorageUnreachable(f"{where}: cannot reach storage ({type(e).__name__})")
    if isinstance(e, gexc.GoogleAPICallError):
        return StorageError(f"{where}: storage refused the request ({getattr(e, 'code', '')} {type(e).__name__})")
    raise e  # local disk trouble or an abort: not storage's doing, the caller handles it
