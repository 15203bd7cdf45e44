"""``http(s)://``: one file from a web server (HTTP has no listing, so no folders).

The storage entry may add ``headers`` (an object of name -> value or list of values,
e.g. an Authorization token), a ``certificate`` (PEM CA bundle for a private server)
and ``client_certificate`` + ``client_key`` (mutual TLS), as in ModelMesh. TLS is
verified unless the entry says ``"insecure_skip_verify": true``. The version is the
ETag, else Last-Modified, else the size. Redirects are followed.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import requests

from mesh.errors import (
    CorruptModel,
    InvalidArgument,
    StorageAccessDenied,
    StorageConfigInvalid,
    StorageError,
    StorageNotFound,
    StorageUnreachable,
)
from puller.backends import ClientCache, Listing, ProgressFn, RemoteObject
from puller.settings import PullerSettings
from puller.source import Source

_CHUNK = 1 << 20


class HttpBackend:
    def __init__(self, settings: PullerSettings) -> None:
        self._timeout = (settings.connect_timeout_s, settings.read_timeout_s)
        self._sessions = ClientCache(_make_session, _close_session)

    def _request(self, source: Source, method: str, url: str, **kwargs: Any) -> requests.Response:
        conn = self._sessions.get(source)
        # verify/cert per request: requests lets REQUESTS_CA_BUNDLE override a session's own.
        return conn.session.request(method, url, timeout=self._timeout, verify=conn.verify, cert=conn.cert, **kwargs)

    def list(self, source: Source) -> Listing:
        path = urlsplit(source.path).path
        if path.endswith("/") or not path.strip("/"):
            raise InvalidArgument(
                f"{source.display}: HTTP cannot list a folder; point at one file (an archive for several)"
            )
        try:
            resp = self._request(source, "HEAD", source.path, allow_redirects=True)
        except requests.RequestException as e:
            raise _translate_exc(e, source) from None
        if resp.status_code in (403, 405, 501):
            # Refused HEAD (presigned URLs are signed for GET only, some servers lack HEAD): the GET will tell.
            return Listing([RemoteObject(source.path, _basename(path), None, "unknown")], True)
        _check_status(resp, source)
        size = resp.headers.get("Content-Length")
        etag, modified = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
        version = etag.strip('"') if etag else f"lm:{modified}" if modified else f"size:{size}"
        return Listing([RemoteObject(source.path, _basename(path), int(size) if size else None, version)], True)

    def download(self, source: Source, obj: RemoteObject, dest: Path, progress: ProgressFn) -> None:
        # Identity encoding: the Content-Length must count the bytes we write.
        headers = {"Accept-Encoding": "identity"}
        if not obj.version.startswith(("W/", "lm:", "size:", "unknown")):
            headers["If-Match"] = f'"{obj.version}"'  # a strong ETag: refuse a file replaced mid-pull
        written = 0
        try:
            with self._request(source, "GET", obj.address, stream=True, headers=headers) as resp:
                if resp.status_code == 412:
                    raise StorageUnreachable(f"{source.display}: the file changed during the download")
                _check_status(resp, source)
                expected = resp.headers.get("Content-Length")
                with open(dest, "wb") as f:
                    for chunk in resp.raw.stream(_CHUNK, decode_content=False):
                        f.write(chunk)
                        written += len(chunk)
                        progress(len(chunk))
        except requests.RequestException as e:
            raise _translate_exc(e, source) from None
        except Exception as e:
            import urllib3.exceptions as u3

            if isinstance(e, u3.HTTPError):
                raise _translate_exc(e, source, written) from None
            raise
        if expected is not None and written != int(expected):
            raise CorruptModel(f"{source.display}: got {written} of {expected} bytes", retryable=True)

    def close(self) -> None:
        self._sessions.close()


@dataclass
class _Conn:
    session: requests.Session
    verify: bool | str = True
    cert: tuple[str, str] | None = None
    #: PEM files written for this entry, removed on close.
    files: list[str] = field(default_factory=list)


def _close_session(conn: _Conn) -> None:
    conn.session.close()
    for name in conn.files:
        Path(name).unlink(missing_ok=True)


def _basename(path: str) -> str:
    return unquote(path.rstrip("/").rsplit("/", 1)[-1])


def _make_session(source: Source) -> _Conn:
    conn = _Conn(requests.Session())
    spec = source.spec
    if spec is None:
        return conn

    def pem_file(text: str) -> str:
        fd, name = tempfile.mkstemp(prefix="meshserve-", suffix=".pem")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        conn.files.append(name)
        return name

    headers = spec.get("headers") or {}
    if not isinstance(headers, dict):
        raise StorageConfigInvalid(f"{spec.describe()}: \"headers\" must be a JSON object of name -> value")
    for name, value in headers.items():
        conn.session.headers[name] = ", ".join(value) if isinstance(value, list) else str(value)
    if spec.get("certificate"):
        conn.verify = pem_file(spec.get("certificate"))
    if spec.flag("insecure_skip_verify"):
        conn.verify = False
    cert, key = spec.get("client_certificate"), spec.get("client_key")
    if bool(cert) != bool(key):
        raise StorageConfigInvalid(f"{spec.describe()}: give both client_certificate and client_key, or neither")
    if cert:
        conn.cert = (pem_file(cert), pem_file(key))
    return conn


def _check_status(resp: requests.Response, source: Source) -> None:
    code = resp.status_code
    if code < 400:
        return
    if code in (401, 403):
        raise StorageAccessDenied(
            f"{source.display}: the server answered {code} using {source.describe_credentials()}; "
            "check the entry's \"headers\" (e.g. an Authorization token) and that it may read this file"
        )
    if code in (404, 410):
        raise StorageNotFound(f"{source.display}: the server answered {code}; check the URL")
    if code >= 500 or code in (408, 429):
        raise StorageUnreachable(f"{source.display}: the server answered {code}")
    raise StorageError(f"{source.display}: the server refused the request ({code})")


def _translate_exc(e: Exception, source: Source, written: int = 0) -> StorageError:
    import urllib3.exceptions as u3

    if isinstance(e, requests.exceptions.SSLError):
        # Only the SSL reason: the exception's text also holds the URL, query and all.
        reason = re.search(r"\[SSL: [A-Z_]+\][^(')]*", str(e))
        return StorageUnreachable(
            f"{source.display}: TLS failed ({reason.group(0).strip() if reason else 'handshake'}); for a private "
            "CA give it as \"certificate\" in the storage entry", retryable=False)
    text = str(e)
    if isinstance(e, (requests.exceptions.ChunkedEncodingError, u3.ProtocolError)) and (
            "IncompleteRead" in text or "InvalidChunkLength" in text):
        return CorruptModel(f"{source.display}: the download was cut short after {written} bytes", retryable=True)
    if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                      requests.exceptions.ChunkedEncodingError, u3.HTTPError)):
        return StorageUnreachable(f"{source.display}: cannot reach the server ({type(e).__name__})")
    return StorageError(f"{source.display}: {type(e).__name__}")
