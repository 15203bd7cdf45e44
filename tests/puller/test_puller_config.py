"""Storage config parsing (file and Secret directory), secret masking, URI resolution,
pvc:// in place, settings from the environment."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from mesh.errors import InvalidArgument, StorageConfigInvalid, StorageNotFound, UnsafePath
from puller.settings import PullerSettings
from puller.source import redact_uri, resolve_source
from puller.storage_config import StorageConfig, StorageConfigSource

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
S3_ENTRY = {"type": "s3", "access_key_id": "AKIAEXAMPLE", "secret_access_key": SECRET,
            "endpoint_url": "http://minio:9000", "region": "us-east-1", "default_bucket": "models"}


def test_file_with_objects_or_json_strings_and_secret_directory(tmp_path: Path) -> None:
    f = tmp_path / "config.json"
    f.write_text(json.dumps({"a": S3_ENTRY, "b": json.dumps({"type": "gcs", "anonymous": True})}))
    assert StorageConfig.load(f).names() == ["a", "b"]
    d = tmp_path / "secret"  # a mounted Kubernetes Secret: one file per key, plus ..data links
    (d / "..2026_11_27").mkdir(parents=True)
    (d / "localMinIO").write_text(json.dumps(S3_ENTRY))
    (d / "..data").symlink_to(d / "..2026_11_27")
    assert StorageConfig.load(d).names() == ["localMinIO"]


def test_secrets_never_appear_in_reprs_or_errors(tmp_path: Path) -> None:
    config = StorageConfig({"a": S3_ENTRY})
    spec = config.spec_for({"storage_key": "a"}, "s3")
    assert spec is not None and spec.get("secret_access_key") == SECRET
    shown = repr(spec) + str(spec.public()) + repr(resolve_source("s3://b/k", {"storage_key": "a"}, config))
    assert SECRET not in shown and "AKIAEXAMPLE" not in shown and "minio:9000" in shown
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"bad": '{"type": "s3", "secret_access_key": "' + SECRET + '"'}))
    with pytest.raises(StorageConfigInvalid) as e:
        StorageConfig.load(broken)
    assert SECRET not in str(e.value) and "'bad'" in str(e.value)


def test_key_selection_default_and_overrides() -> None:
    config = StorageConfig({"a": S3_ENTRY, "default": {"type": "gcs", "anonymous": True}})
    spec = config.spec_for({"storage_key": "a", "storage_params": {"bucket": "other"}}, "s3")
    assert spec is not None and spec.get("bucket") == "other" and spec.key == "a"
    default = config.spec_for({}, "gs")
    assert default is not None and default.key == "default"
    assert config.spec_for({}, "s3") is None  # default is gcs: not for an s3:// URI
    with pytest.raises(StorageConfigInvalid, match="keys: 'a', 'default'"):
        config.spec_for({"storage_key": "missing"}, "s3")
    with pytest.raises(StorageConfigInvalid, match="cannot serve"):
        config.spec_for({"storage_key": "a"}, "gs")
    with pytest.raises(StorageConfigInvalid, match="type"):
        StorageConfig({"x": {"type": "ftp"}})


def test_config_is_reread_when_the_secret_changes(tmp_path: Path) -> None:
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"a": S3_ENTRY}))
    source = StorageConfigSource(f)
    assert source.current().names() == ["a"]
    f.write_text(json.dumps({"a": S3_ENTRY, "b": S3_ENTRY}))
    os.utime(f, ns=(1, 1))
    assert source.current().names() == ["a", "b"]


@pytest.mark.parametrize("uri,key,scheme,bucket,path", [
    ("s3://bkt/a/b.onnx", {}, "s3", "bkt", "a/b.onnx"),
    ("gs://bkt/dir/", {}, "gs", "bkt", "dir/"),
    ("https://host/m.onnx", {}, "http", "", "https://host/m.onnx"),
    ("pvc://vol/m/1", {}, "pvc", "vol", "m/1"),
    ("file:///models/m.onnx", {}, "file", "", "/models/m.onnx"),
    ("/models/m.onnx", {}, "file", "", "/models/m.onnx"),
    ("m/model.onnx", {"storage_key": "a"}, "s3", "models", "m/model.onnx"),
    ("m/model.onnx", {"storage_key": "a", "storage_params": {"bucket": "x"}}, "s3", "x", "m/model.onnx"),
    ("m/model 1.onnx", {"storage_key": "web"}, "http", "", "https://h/base/m/model%201.onnx"),
    ("m/", {"storage_key": "vol"}, "pvc", "pvc1", "m/"),
])
def test_uris_resolve(uri: str, key: dict[str, Any], scheme: str, bucket: str, path: str) -> None:
    source = resolve_source(uri, key, StorageConfig({"a": S3_ENTRY, "web": {"type": "http", "url": "https://h/base"},
                                                     "vol": {"type": "pvc", "name": "pvc1"}}))
    assert (source.scheme, source.bucket, source.path) == (scheme, bucket, path)


@pytest.mark.parametrize("uri,error", [
    ("", InvalidArgument), ("ftp://host/x", InvalidArgument), ("s3:///nobucket", InvalidArgument),
    ("s3://b/a/../../x", UnsafePath), ("pvc://vol/../other/x", UnsafePath),
])
def test_bad_uris_are_refused(uri: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        resolve_source(uri, {}, StorageConfig.empty())


def test_redaction() -> None:
    assert redact_uri("https://u:p@h:8443/x?X-Amz-Signature=abc") == "https://h:8443/x?…"


async def test_pvc_is_used_in_place_and_cannot_be_escaped(tmp_path: Path, make_fetcher: Any) -> None:
    volume = tmp_path / "pvc" / "vol"
    (volume / "m").mkdir(parents=True)
    (volume / "m" / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "secret.txt").write_text("s")
    (volume / "escape").symlink_to(tmp_path / "secret.txt")
    fetcher = await make_fetcher()
    got = await fetcher.fetch("pvc-model", "pvc://vol/m", {})
    assert got.path == volume / "m" and got.from_cache and got.size_bytes == 4
    assert list((fetcher.settings.cache_dir / "models").iterdir()) == []  # no copy
    with pytest.raises(UnsafePath):
        await fetcher.fetch("pvc-escape", "pvc://vol/escape", {})
    with pytest.raises(StorageNotFound, match="not mounted"):
        await fetcher.fetch("pvc-missing", "pvc://other/m", {})


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MESHSERVE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("MESHSERVE_CACHE_BUDGET", "2Gi")
    monkeypatch.setenv("MESHSERVE_MAX_CONCURRENT_PULLS", "2")
    s = PullerSettings()
    assert s.cache_dir == tmp_path and s.cache_budget == 2 * 2**30 and s.max_concurrent_pulls == 2


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/..", "..", "", "."])
def test_object_names_that_would_escape_are_refused(name: str) -> None:
    from puller.pull import safe_relative

    with pytest.raises(UnsafePath):
        safe_relative(name, "s3://b/m/")


def test_object_names_are_normalised() -> None:
    from puller.pull import safe_relative

    assert safe_relative("a//b/./c", "s3://b/m/") == "a/b/c"
    assert safe_relative("/lead", "s3://b/m/") == "lead"


async def test_an_archive_on_a_volume_is_unpacked_into_the_cache(tmp_path: Path, make_fetcher: Any) -> None:
    import tarfile

    volume = tmp_path / "pvc" / "vol"
    volume.mkdir(parents=True)
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    with tarfile.open(volume / "m.tar.gz", "w:gz") as t:
        t.add(tmp_path / "model.onnx", arcname="model.onnx")
    fetcher = await make_fetcher()
    got = await fetcher.fetch("pvc-archive", "pvc://vol/m.tar.gz", {})
    assert got.path.is_relative_to(fetcher.settings.cache_dir) and (got.path / "model.onnx").read_bytes() == b"onnx"


async def test_a_key_that_is_not_an_object_is_refused(make_fetcher: Any) -> None:
    fetcher = await make_fetcher()
    with pytest.raises(InvalidArgument, match="JSON object"):
        await fetcher.fetch("k", "/x", "storage_key")  # type: ignore[arg-type]


def test_a_source_repr_shows_no_url_credentials() -> None:
    source = resolve_source("https://user:hunter2@h/m.bin?X-Amz-Signature=abc", {}, StorageConfig.empty())
    assert "hunter2" not in repr(source) and "abc" not in repr(source) and "https://h/m.bin" in repr(source)


async def test_a_broken_storage_config_fails_remote_pulls_but_not_local_ones(
        tmp_path: Path, make_fetcher: Any) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    (tmp_path / "m.onnx").write_bytes(b"local")
    fetcher = await make_fetcher(storage_config=broken)
    assert (await fetcher.fetch("local", str(tmp_path / "m.onnx"), {})).path.read_bytes() == b"local"
    with pytest.raises(StorageConfigInvalid, match="not valid JSON"):
        await fetcher.fetch("remote", "s3://b/m.onnx", {})
