"""What the deploy tests share: which variants of deploy/ exist, rendered once.

A variant is each overlay, plus each component that no overlay uses (the
optional ones, such as hpa-requests-per-second) applied on top of overlays/cpu,
so every manifest in deploy/ is rendered and checked by some variant.
"""

from __future__ import annotations

import atexit
import copy
import os
import shutil
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.kustomize_lite import render

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
Obj = dict[str, Any]


def overlay_dirs() -> list[Path]:
    return sorted(p.parent for p in (DEPLOY / "overlays").glob("*/kustomization.yaml"))


def optional_components() -> list[Path]:
    used = set()
    for overlay in overlay_dirs():
        k = yaml.safe_load((overlay / "kustomization.yaml").read_text())
        used |= {(overlay / c).resolve() for c in k.get("components", [])}
    every = sorted(p.parent.resolve() for p in (DEPLOY / "components").glob("*/kustomization.yaml"))
    return [c for c in every if c not in used]


@cache
def variants() -> dict[str, Path]:
    found = {p.name: p for p in overlay_dirs()}
    scratch = Path(tempfile.mkdtemp(prefix="meshserve-deploy-"))
    atexit.register(shutil.rmtree, scratch, True)
    for component in optional_components():
        d = scratch / component.name
        d.mkdir()
        # Relative paths: kustomize resolves resources and components from here.
        k = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(DEPLOY / "overlays" / "cpu", d)],
            "components": [os.path.relpath(component, d)],
        }
        (d / "kustomization.yaml").write_text(yaml.safe_dump(k))
        found[f"cpu+{component.name}"] = d
    return found


@cache
def _rendered(name: str) -> list[Obj]:
    return render(variants()[name])


def rendered(name: str) -> list[Obj]:
    """Objects of one variant; a copy, so a test may change them."""
    return copy.deepcopy(_rendered(name))


def pod_specs(objs: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(workload, its pod spec) for every object that runs pods."""
    for obj in objs:
        template = obj.get("spec", {}).get("template")
        if isinstance(template, dict) and "spec" in template:
            yield obj, template["spec"]


def meshserve_containers(objs: list[Obj]) -> Iterator[tuple[Obj, Obj, Obj]]:
    """(workload, pod spec, container) for every container running `meshserve`."""
    for workload, spec in pod_specs(objs):
        for container in spec.get("containers", []):
            if "/meshserve" in container["image"] or container["image"].startswith("meshserve"):
                yield workload, spec, container
