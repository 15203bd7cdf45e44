"""tests/kustomize_lite.py renders what kustomize renders.

Every deploy/ variant and every feature case below is rendered by both and compared
with `kubectl kustomize` (the machine's kubectl, else the one scripts/bootstrap.sh puts
in the venv's bin folder). Without a kubectl the comparison fails, never skips.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy_support import variants
from tests.kustomize_lite import Unsupported, render

KUBECTL = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))


def kubectl_render(directory: Path) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    out = subprocess.run([KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def canonical(objs: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    result = {}
    for obj in objs:
        if obj["kind"] == "Secret":  # kustomize wraps long base64 lines; compare the bytes
            obj = {**obj, "data": {k: base64.b64decode(v) for k, v in obj["data"].items()}}
        meta = obj["metadata"]
        result[(obj["kind"], meta.get("namespace", ""), meta["name"])] = obj
    return result


def assert_same_as_kubectl(directory: Path) -> None:
    if KUBECTL is None:
        pytest.fail("kubectl is not installed: run scripts/bootstrap.sh (it fetches one), or put kubectl on PATH")
    assert canonical(render(directory)) == canonical(kubectl_render(directory))


@pytest.mark.parametrize("variant", sorted(variants()))
def test_deploy_variants_render_as_kubectl_renders_them(variant: str) -> None:
    assert_same_as_kubectl(variants()[variant])


def write(root: Path, files: dict[str, Any]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = content if isinstance(content, str) else yaml.safe_dump_all(content if isinstance(content, list) else [content])
        path.write_text(text)
    return root


DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app"},
    "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
        "metadata": {"labels": {"a": "b"}},
        "spec": {"containers": [
            {"name": "main", "image": "meshserve", "args": ["x"],
             "env": [{"name": "KEEP", "value": "1"}, {"name": "DROP", "value": "2"}]},
            {"name": "side", "image": "registry.local:5000/side:1.0"},
        ]}}},
}


def test_strategic_merge_merges_lists_by_key_and_deletes(tmp_path: Path) -> None:
    patch = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app"},
             "spec": {"template": {"spec": {"nodeSelector": {"gpu": "yes"}, "containers": [
                 {"name": "main", "args": ["y"], "env": [{"name": "DROP", "$patch": "delete"}, {"name": "NEW", "value": "3"}]},
             ]}}}}
    write(tmp_path, {"base/d.yaml": DEPLOYMENT, "base/kustomization.yaml": {"resources": ["d.yaml"]},
                     "o/p.yaml": patch,
                     "o/kustomization.yaml": {"resources": ["../base"], "patches": [{"path": "p.yaml"}], "namespace": "ns",
                                              "images": [{"name": "registry.local:5000/side", "newTag": "2.0"}]}})
    [obj] = render(tmp_path / "o")
    main, side = obj["spec"]["template"]["spec"]["containers"]
    assert main["args"] == ["y"] and [e["name"] for e in main["env"]] == ["NEW", "KEEP"]
    assert side["image"] == "registry.local:5000/side:2.0" and obj["metadata"]["namespace"] == "ns"
    assert obj["spec"]["template"]["spec"]["nodeSelector"] == {"gpu": "yes"}
    assert_same_as_kubectl(tmp_path / "o")


def test_json6902_components_and_generators(tmp_path: Path) -> None:
    ops = "- {op: add, path: /spec/template/spec/containers/0/args/-, value: --z}\n" \
          "- {op: replace, path: /spec/template/spec/containers/1/image, value: other}\n" \
          "- {op: remove, path: /spec/template/spec/containers/0/env/1}\n"
    write(tmp_path, {
        "base/d.yaml": DEPLOYMENT, "base/settings.txt": "a: 1\n",
        "base/kustomization.yaml": {"resources": ["d.yaml"], "generatorOptions": {"disableNameSuffixHash": True},
                                    "configMapGenerator": [{"name": "cfg", "literals": ["k=v"], "files": ["settings.txt"],
                                                            "options": {"labels": {"l": "1"}}}],
                                    "secretGenerator": [{"name": "s", "literals": ["token=REPLACE"]}]},
        "comp/kustomization.yaml": {"apiVersion": "kustomize.config.k8s.io/v1alpha1", "kind": "Component",
                                    "patches": [{"target": {"kind": "Deployment", "name": "app"}, "patch": ops}]},
        "o/kustomization.yaml": {"resources": ["../base"], "components": ["../comp"],
                                 "generatorOptions": {"disableNameSuffixHash": True},
                                 "configMapGenerator": [{"name": "cfg", "behavior": "merge", "literals": ["k=w"]}]},
    })
    objs = {o["kind"]: o for o in render(tmp_path / "o")}
    main, side = objs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert main["args"] == ["x", "--z"] and [e["name"] for e in main["env"]] == ["KEEP"] and side["image"] == "other"
    assert objs["ConfigMap"]["data"] == {"k": "w", "settings.txt": "a: 1\n"}
    assert objs["ConfigMap"]["metadata"]["labels"] == {"l": "1"}
    assert base64.b64decode(objs["Secret"]["data"]["token"]) == b"REPLACE"
    assert_same_as_kubectl(tmp_path / "o")


@pytest.mark.parametrize("kustomization", [
    {"resources": ["d.yaml"], "namePrefix": "x-"},
    {"resources": ["d.yaml"], "configMapGenerator": [{"name": "c", "literals": ["a=b"]}]},  # would need a hash
    {"resources": ["d.yaml"], "patches": [{"target": {"labelSelector": "a=b"}, "patch": "- {op: remove, path: /spec}"}]},
])
def test_unsupported_features_are_refused_not_guessed(tmp_path: Path, kustomization: dict[str, Any]) -> None:
    write(tmp_path, {"d.yaml": DEPLOYMENT, "kustomization.yaml": kustomization})
    with pytest.raises(Unsupported):
        render(tmp_path)
