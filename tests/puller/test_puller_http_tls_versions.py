"""HTTP storage: insecure_skip_verify, client certificates (mutual TLS), and the version
(ETag, else Last-Modified) deciding whether the cached copy is still the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from load_tests.storage_servers import FileServer, Route
from tls_support import https_server, self_signed

from mesh.errors import StorageUnreachable


async def test_insecure_skip_verify_accepts_an_unknown_certificate(
        tmp_path: Path, make_fetcher: Any, storage_config_file: Any) -> None:
    cert, key = self_signed(tmp_path, "server")
    (tmp_path / "m.bin").write_bytes(b"unverified")
    with https_server(tmp_path, cert, key) as base:
        fetcher = await make_fetcher(storage_config=storage_config_file({
            "lax": {"type": "http", "insecure_skip_verify": True},
            "strict": {"type": "http"},
        }))
        with pytest.raises(StorageUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
            await fetcher.fetch("strict", f"{base}/m.bin", {"storage_key": "strict"})
        got = await fetcher.fetch("lax", f"{base}/m.bin", {"storage_key": "lax"})
        assert got.path.read_bytes() == b"unverified"


async def test_client_certificate_is_presented_for_mutual_tls(
        tmp_path: Path, make_fetcher: Any, storage_config_file: Any) -> None:
    cert, key = self_signed(tmp_path, "server")
    client_cert, client_key = self_signed(tmp_path, "client")
    (tmp_path / "m.bin").write_bytes(b"mutual")
    with https_server(tmp_path, cert, key, client_ca=client_cert) as base:
        server_ca = cert.read_text()
        fetcher = await make_fetcher(storage_config=storage_config_file({
            "anon": {"type": "http", "certificate": server_ca},
            "mtls": {"type": "http", "certificate": server_ca, "client_certificate": client_cert.read_text(),
                     "client_key": client_key.read_text()},
        }))
        with pytest.raises(StorageUnreachable):  # the server refuses a client without a certificate
            await fetcher.fetch("anon", f"{base}/m.bin", {"storage_key": "anon"})
        got = await fetcher.fetch("mtls", f"{base}/m.bin", {"storage_key": "mtls"})
        assert got.path.read_bytes() == b"mutual"


@pytest.mark.parametrize("headers,version", [
    ({"etag": '"abc1"'}, "abc1"),
    ({"etag": "", "headers": {"Last-Modified": "Mon, 01 Dec 2025 10:00:00 GMT"}}, "lm:Mon, 01 Dec 2025 10:00:00 GMT"),
])
async def test_the_etag_else_last_modified_is_the_cached_version(
        http_server: FileServer, make_fetcher: Any, headers: dict[str, Any], version: str) -> None:
    route = http_server.routes["/m.bin"] = Route(b"one", **headers)
    fetcher = await make_fetcher()
    first = await fetcher.fetch("m", f"{http_server.url}/m.bin", {})
    assert not first.from_cache and first.path.read_bytes() == b"one"
    assert [e.version for e in fetcher.cache.entries()] == [version]
    await fetcher.release("m")
    # A model id names one content: the cached version is served without asking the server.
    route.body = b"two"
    again = await fetcher.fetch("m", f"{http_server.url}/m.bin", {})
    assert again.from_cache and again.path.read_bytes() == b"one" and route.gets == 1
