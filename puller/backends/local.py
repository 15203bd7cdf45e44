"""``file://`` URIs and plain paths: a local file or directory, copied into the cache.

Copied (not used in place) so archives are unpacked, sizes are checked and the
cached copy survives the source being edited; ``pvc://`` is the in-place scheme.
The version is the modification time and size.
"""

from __future__ import annotations

import os
from pathlib import Path

from mesh.errors import StorageAccessDenied, StorageNotFound
from puller.backends import Listing, ProgressFn, RemoteObject
from puller.source import Source

_CHUNK = 1 << 20


def _object(path: Path, name: str) -> RemoteObject:
    st = path.stat()
    return RemoteObject(str(path), name, st.st_size, f"{st.st_mtime_ns}:{st.st_size}")


def list_tree(root: Path, display: str) -> Listing:
    """One file, or every regular file under a directory (symlinks followed)."""
    try:
        if root.is_file():
            return Listing([_object(root, root.name)], True)
        if not root.is_dir():
            raise StorageNotFound(f"{display}: {root} does not exist")
        objects = [
            _object(Path(dirpath) / f, (Path(dirpath) / f).relative_to(root).as_posix())
            for dirpath, _dirs, files in os.walk(root, followlinks=True)
            for f in files
            if (Path(dirpath) / f).is_file()
        ]
    except PermissionError:
        raise StorageAccessDenied(f"{display}: this process may not read {root}") from None
    if not objects:
        raise StorageNotFound(f"{display}: {root} is an empty directory")
    return Listing(sorted(objects, key=lambda o: o.name), False)


def copy_file(src: Path, dest: Path, progress: ProgressFn) -> None:
    try:
        with open(src, "rb") as fin, open(dest, "wb") as fout:
            while chunk := fin.read(_CHUNK):
                fout.write(chunk)
                progress(len(chunk))
    except FileNotFoundError:
        raise StorageNotFound(f"{src} disappeared during the copy") from None
    except PermissionError:
        raise StorageAccessDenied(f"this process may not read {src}") from None


class LocalBackend:
    def list(self, source: Source) -> Listing:
        return list_tree(Path(source.path), source.display)

    def download(self, source: Source, obj: RemoteObject, dest: Path, progress: ProgressFn) -> None:
        copy_file(Path(obj.address), dest, progress)

    def close(self) -> None:
        return None
