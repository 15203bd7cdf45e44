"""Regenerates the Python code for our .proto files.

Run ``python -m mesh.proto.codegen`` after editing a .proto; the generated files
are committed and ``tests/test_protocols.py`` fails when they are stale. Protos are
compiled from the repository root so generated imports read ``mesh.proto...``.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_FILES = (
    "mesh/proto/mmesh/model_mesh.proto",
    "mesh/proto/mmesh/model_runtime.proto",
    "mesh/proto/meshserve/v1/admin.proto",
)


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def generate(out_dir: Path) -> None:
    """Compiles every proto into ``out_dir`` (mirroring the source tree)."""
    from grpc_tools import protoc  # build-time dependency only

    root = repo_root()
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{root}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(root / p) for p in PROTO_FILES),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed; see the messages above")


def main() -> int:
    generate(repo_root())
    return 0


if __name__ == "__main__":
    sys.exit(main())
