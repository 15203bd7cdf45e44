"""Archives: unpacked after download; any entry escaping the target refuses the whole archive."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from conftest import BUCKET
from load_tests.storage_servers import MotoS3

from mesh.errors import CorruptModel, UnsafeArchive


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as t:  # type: ignore[call-overload]
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            t.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _zip(path: Path, entries: dict[str, bytes], symlink: tuple[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink[0])
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, symlink[1])
    return path


def _assert_nothing_left(cache_dir: Path, outside: Path) -> None:
    assert list((cache_dir / "tmp").iterdir()) == [] and list((cache_dir / "models").iterdir()) == []
    assert not outside.exists()


@pytest.mark.parametrize("suffix,mode", [(".tar.gz", "w:gz"), (".tgz", "w:gz"), (".tar", "w")])
async def test_tar_archives_are_unpacked(tmp_path: Path, make_fetcher: Any, suffix: str, mode: str) -> None:
    archive = _tar(tmp_path / f"model{suffix}", [
        (_file("model/config.json"), b"{}"), (_file("model/1/model.onnx"), b"onnx"),
        (_link("model/latest", "1"), b""), (_link("model/copy.json", "model/config.json", tarfile.LNKTYPE), b""),
    ], mode)
    fetcher = await make_fetcher()
    got = await fetcher.fetch("tar-model", str(archive), {})
    assert got.path.is_dir() and (got.path / "model" / "1" / "model.onnx").read_bytes() == b"onnx"
    assert (got.path / "model" / "latest" / "model.onnx").read_bytes() == b"onnx"
    assert (got.path / "model" / "copy.json").read_bytes() == b"{}"
    assert not list(got.path.glob("*.tar*"))  # the archive itself is not kept


async def test_zip_from_s3_is_unpacked(s3_server: MotoS3, tmp_path: Path, make_fetcher: Any,
                                       storage_config_file: Any) -> None:
    archive = _zip(tmp_path / "m.zip", {"m/model.onnx": b"onnx", "m/labels.txt": b"cat\ndog\n"})
    s3_server.admin().put_object(Bucket=BUCKET, Key="archives/m.zip", Body=archive.read_bytes())
    fetcher = await make_fetcher(storage_config=storage_config_file({"default": s3_server.storage_entry()}))
    got = await fetcher.fetch("zip-model", f"s3://{BUCKET}/archives/m.zip", {})
    assert (got.path / "m" / "labels.txt").read_bytes() == b"cat\ndog\n"


async def test_zip_slip_from_s3_is_refused_and_nothing_is_written_outside(
        s3_server: MotoS3, tmp_path: Path, make_fetcher: Any, storage_config_file: Any) -> None:
    fetcher = await make_fetcher(storage_config=storage_config_file({"default": s3_server.storage_entry()}))
    cache = fetcher.settings.cache_dir
    outside = cache.parent / "evil.txt"
    depth = "../" * (len(cache.relative_to(cache.anchor).parts) + 3)  # enough to climb from any staging dir
    archive = _zip(tmp_path / "slip.zip", {"ok.txt": b"fine", f"{depth}{outside.relative_to(outside.anchor)}": b"x",
                                           "../evil.txt": b"x"})
    s3_server.admin().put_object(Bucket=BUCKET, Key="archives/slip.zip", Body=archive.read_bytes())
    with pytest.raises(UnsafeArchive, match="refused"):
        await fetcher.fetch("slip", f"s3://{BUCKET}/archives/slip.zip", {})
    _assert_nothing_left(cache, outside)


@pytest.mark.parametrize("members,why", [
    ([(_file("/abs/evil.txt"), b"x")], "absolute"),
    ([(_file("ok.txt"), b"ok"), (_file("a/../../evil.txt"), b"x")], "'..'"),
    ([(_link("link", "../../evil.txt"), b"")], "outside"),
    ([(_link("link", "/etc/passwd"), b"")], "absolute"),
    ([(_link("hard", "../evil.txt", tarfile.LNKTYPE), b"")], "outside"),
    ([(_link("dev", "", tarfile.CHRTYPE), b"")], "special"),
    ([(_link("fifo", "", tarfile.FIFOTYPE), b"")], "special"),
])
async def test_unsafe_tar_entries_refuse_the_whole_archive(
        tmp_path: Path, make_fetcher: Any, members: list[tuple[tarfile.TarInfo, bytes]], why: str) -> None:
    archive = _tar(tmp_path / "evil.tar.gz", [(_file("model.onnx"), b"fine"), *members])
    fetcher = await make_fetcher()
    with pytest.raises(UnsafeArchive, match=why):
        await fetcher.fetch("evil", str(archive), {})
    _assert_nothing_left(fetcher.settings.cache_dir, fetcher.settings.cache_dir.parent / "evil.txt")


async def test_zip_symlinks_are_refused(tmp_path: Path, make_fetcher: Any) -> None:
    archive = _zip(tmp_path / "link.zip", {"a.txt": b"a"}, symlink=("l", "/etc/passwd"))
    fetcher = await make_fetcher()
    with pytest.raises(UnsafeArchive, match="link"):
        await fetcher.fetch("zlink", str(archive), {})


async def test_a_file_that_is_not_an_archive_is_corrupt(tmp_path: Path, make_fetcher: Any) -> None:
    (tmp_path / "fake.tar.gz").write_bytes(b"this is not gzip")
    (tmp_path / "fake.zip").write_bytes(b"PK nope")
    fetcher = await make_fetcher()
    for name in ("fake.tar.gz", "fake.zip"):
        with pytest.raises(CorruptModel, match="not a valid"):
            await fetcher.fetch(name, str(tmp_path / name), {})
