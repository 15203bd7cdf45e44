"""The runtime's model roots: local model paths must lie under one of them.

A registration can name any path; without this rule anyone who may register a
model could make a runtime read ``/etc/passwd`` or a Secret mounted in its pod.
The check resolves symlinks and ``..`` first (``realpath``), so a link inside a
root that points outside is refused too. Remote URIs (s3://, gs://, http(s)://,
pvc://) are not local paths and pass; the puller confines those on its own.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from mesh.errors import PermissionDenied
from mesh.fetcher import local_path


def _inside(path: str, root: str) -> bool:
    root = os.path.realpath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_model_path(model_id: str, uri: str, roots: Sequence[str]) -> None:
    """PermissionDenied unless ``uri`` is remote or resolves under one of ``roots``."""
    local = local_path(uri)
    if local is None:
        return
    real = os.path.realpath(Path.cwd() / local if not local.is_absolute() else local)
    if any(_inside(real, r) for r in roots if r):
        return
    shown = ", ".join(r for r in roots if r) or "(none)"
    raise PermissionDenied(
        f"model {model_id!r}: local path {str(local)!r} is outside this runtime's model roots ({shown}); "
        "put the model under one of them, or add its folder to --model-roots / MESHSERVE_MODEL_ROOTS")
