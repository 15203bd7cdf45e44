"""`meshserve pull`: pre-warms a cache, prints the path, exits 2 with a message on errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from load_tests.storage_servers import FileServer, Route

from mesh.cli import main
from mesh.cli.pull_cmd import model_id_from_uri
from mesh.registry.ids import validate_id


def test_pull_prewarms_the_cache_then_finds_it_there(
        tmp_path: Path, http_server: FileServer, capsys: pytest.CaptureFixture[str]) -> None:
    http_server.routes["/m.onnx"] = Route(b"x" * 5000, require={"X-Token": "abc"})
    config = tmp_path / "sc.json"
    config.write_text(json.dumps({"web": {"type": "http", "headers": {"X-Token": "abc"}}}))
    argv = ["pull", f"{http_server.url}/m.onnx", "--model-id", "team/m:1", "--cache-dir", str(tmp_path / "c"),
            "--storage-config", str(config), "--key", '{"storage_key": "web"}']
    assert main(argv) == 0
    out, err = capsys.readouterr()
    path = Path(out.strip())
    assert path.read_bytes() == b"x" * 5000 and "pulled 5,000 of 5,000 bytes" in err
    http_server.stop()
    assert main(argv) == 0  # served from the cache: the server is gone
    out, err = capsys.readouterr()
    assert Path(out.strip()) == path and "already cached" in err


@pytest.mark.parametrize("extra,message", [
    (["--key", "{nope"], "--key is not valid JSON"),
    (["--key", "[1]"], "--key must be a JSON object"),
    (["--cache-budget", "lots"], "invalid size"),
    ([], "does not exist"),
])
def test_errors_exit_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      extra: list[str], message: str) -> None:
    argv = ["pull", str(tmp_path / "missing.onnx"), "--cache-dir", str(tmp_path / "c"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("meshserve pull: ") and message in err and "Traceback" not in err


@pytest.mark.parametrize("uri", ["s3://bucket/models/m1/", "https://h:8080/a b/m.onnx?x=1", "/abs/../m", "x"])
def test_derived_model_ids_are_valid(uri: str) -> None:
    assert validate_id(model_id_from_uri(uri))
