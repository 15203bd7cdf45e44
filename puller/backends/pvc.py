"""``pvc://NAME/path``: a Kubernetes volume mounted at ``<pvc_root>/NAME``, used in place.

The fetcher hands the runtime the mounted path itself (no copy, no cache entry);
only an archive on a volume is unpacked into the cache, through this backend's
``list``/``download``. ``..`` and symlinks leading out of the volume are refused.
"""

from __future__ import annotations

from pathlib import Path

from mesh.errors import StorageNotFound, UnsafePath
from puller.backends import Listing, ProgressFn, RemoteObject
from puller.backends.local import copy_file, list_tree
from puller.source import Source


class PvcBackend:
    def __init__(self, root: Path) -> None:
        self._root = root

    def resolve(self, source: Source) -> Path:
        """The mounted path; blocking (resolves symlinks)."""
        volume = self._root / source.bucket
        if not volume.is_dir():
            raise StorageNotFound(
                f"{source.display}: volume {source.bucket!r} is not mounted at {volume}; mount the PVC there "
                "(or set MESHSERVE_PVC_ROOT to where volumes are mounted)"
            )
        path = (volume / source.path).resolve()
        if not path.is_relative_to(volume.resolve()):
            raise UnsafePath(f"{source.display}: the path leads outside volume {source.bucket!r}")
        if not path.exists():
            raise StorageNotFound(f"{source.display}: {path} does not exist on the volume")
        return path

    def list(self, source: Source) -> Listing:
        return list_tree(self.resolve(source), source.display)

    def download(self, source: Source, obj: RemoteObject, dest: Path, progress: ProgressFn) -> None:
        copy_file(Path(obj.address), dest, progress)

    def close(self) -> None:
        return None
