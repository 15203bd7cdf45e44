"""Unpacking ``.tar.gz``, ``.tgz``, ``.tar`` and ``.zip`` models, refusing path escapes.

Every entry is checked before anything is written: an absolute path, a ``..``
segment, a link whose target leaves the archive's root, a device or FIFO makes the
whole archive refused with :class:`~mesh.errors.UnsafeArchive`. tar extraction then
also runs under Python's ``data`` filter, which re-checks each path on disk as it
writes (a second line of defence). The caller unpacks into an empty staging
directory inside the cache and renames it into place, so a refused archive leaves
nothing behind. Blocking: run in an executor.
"""

from __future__ import annotations

import gzip
import posixpath
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path

from mesh.errors import CorruptModel, UnsafeArchive

_COPY_CHUNK = 1 << 20
#: What a damaged or mislabelled archive raises while being read.
_BROKEN = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile)


def archive_kind(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    if lower.endswith(".tar"):
        return "tar"
    if lower.endswith(".zip"):
        return "zip"
    return None


def _check_name(name: str, what: str) -> str:
    """The entry's normalised relative path; refuses absolute paths and '..'."""
    clean = name.replace("\\", "/")
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":"):
        raise UnsafeArchive(f"{what}: entry {name!r} has an absolute path; the archive is refused")
    if any(part == ".." for part in clean.split("/")):
        raise UnsafeArchive(f"{what}: entry {name!r} contains '..'; the archive is refused")
    return posixpath.normpath(clean)


def _check_link(entry: str, target: str, what: str, *, hard: bool) -> None:
    # Hard link targets are archive paths; symlink targets are relative to the link's folder.
    if target.startswith("/") or "\\" in target:
        raise UnsafeArchive(f"{what}: link {entry!r} points to absolute path {target!r}; the archive is refused")
    base = "" if hard else posixpath.dirname(entry)
    resolved = posixpath.normpath(posixpath.join(base, target))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchive(f"{what}: link {entry!r} points outside the archive ({target!r}); the archive is refused")


def unpacked_size(archive: Path, kind: str, what: str) -> int:
    """Bytes the archive will take once unpacked (checked against the cache budget first)."""
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as z:
                return sum(i.file_size for i in z.infolist())
        with _open_tar(archive, kind) as t:
            return sum(m.size for m in t.getmembers() if m.isfile())
    except _BROKEN as e:
        raise CorruptModel(f"{what}: not a valid {kind} archive ({type(e).__name__}: {e})") from None


def unpack(archive: Path, kind: str, dest: Path, what: str) -> None:
    """Unpacks ``archive`` into the empty directory ``dest``; refuses unsafe entries."""
    try:
        if kind == "zip":
            _unzip(archive, dest, what)
        else:
            _untar(archive, kind, dest, what)
    except _BROKEN as e:
        if isinstance(e, (tarfile.AbsolutePathError, tarfile.OutsideDestinationError,
                          tarfile.SpecialFileError, tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError)):
            raise UnsafeArchive(f"{what}: {e}; the archive is refused") from None
        raise CorruptModel(f"{what}: not a valid {kind} archive ({type(e).__name__}: {e})") from None


def _open_tar(archive: Path, kind: str) -> tarfile.TarFile:
    return tarfile.open(archive, "r:gz") if kind == "tar.gz" else tarfile.open(archive, "r:")


def _untar(archive: Path, kind: str, dest: Path, what: str) -> None:
    with _open_tar(archive, kind) as t:
        members = t.getmembers()
        for m in members:
            name = _check_name(m.name, what)
            if m.issym() or m.islnk():
                _check_link(name, m.linkname, what, hard=m.islnk())
            elif not (m.isfile() or m.isdir()):
                raise UnsafeArchive(
                    f"{what}: entry {m.name!r} is a device, FIFO or other special file; the archive is refused"
                )
        t.extractall(dest, members=members, filter="data")


def _unzip(archive: Path, dest: Path, what: str) -> None:
    with zipfile.ZipFile(archive) as z:
        infos = z.infolist()
        plan = []
        for info in infos:
            name = _check_name(info.filename, what)
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0 unless made on Unix
            if kind == stat.S_IFLNK:
                raise UnsafeArchive(
                    f"{what}: entry {info.filename!r} is a symbolic link; zip models may not hold links")
            if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                raise UnsafeArchive(f"{what}: entry {info.filename!r} is a special file; the archive is refused")
            plan.append((info, name))
        root = dest.resolve()
        for info, name in plan:
            target = (dest / name).resolve()
            if not target.is_relative_to(root):
                raise UnsafeArchive(f"{what}: entry {info.filename!r} lands outside the target; the archive is refused")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, _COPY_CHUNK)
