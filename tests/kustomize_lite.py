"""A small kustomize renderer: exactly the features deploy/ uses, and no more.

Why: the deploy tests must render every overlay on machines without kubectl.
Where ``kubectl kustomize`` exists, tests/test_kustomize_lite.py checks that both
render the same objects, so this cannot drift from real kustomize unnoticed.

Supported: ``resources`` (files and directories), ``components``,
``configMapGenerator`` / ``secretGenerator`` (``files``, ``literals``,
``behavior`` create/merge/replace, per-generator ``options.labels``) with
``generatorOptions.disableNameSuffixHash: true``, ``patches`` (strategic merge
for the list fields below, or JSON 6902; by ``path`` or inline ``patch``, with an
optional ``target`` of kind/name), ``images`` and ``namespace``. Anything else
raises :class:`Unsupported` rather than rendering something kustomize would not.
"""

from __future__ import annotations

import base64
import copy
import re
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

KUSTOMIZATION_KEYS = {
    "apiVersion", "kind", "resources", "components", "configMapGenerator", "secretGenerator",
    "generatorOptions", "patches", "images", "namespace",
}
#: Strategic-merge list fields and the key their items merge on (Kubernetes'
#: patchMergeKey). Any other list is replaced whole, as kustomize does.
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
    "volumeMounts": "mountPath", "imagePullSecrets": "name", "topologySpreadConstraints": "topologyKey",
}
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume",
    "StorageClass", "PriorityClass", "APIService", "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}


class Unsupported(Exception):
    """The kustomization uses a feature this renderer does not implement."""


def render(directory: str | Path) -> list[Obj]:
    """The objects ``kubectl kustomize DIRECTORY`` would print (order aside)."""
    return _build(Path(directory), None)


def _build(root: Path, incoming: list[Obj] | None) -> list[Obj]:
    k = yaml.safe_load((root / "kustomization.yaml").read_text()) or {}
    unknown = set(k) - KUSTOMIZATION_KEYS
    if unknown:
        raise Unsupported(f"{root}: kustomization fields {sorted(unknown)}")
    is_component = k.get("kind") == "Component"
    if is_component != (incoming is not None):
        raise Unsupported(f"{root}: a Component must be listed under components, and only there")
    objs = list(incoming or [])
    for entry in k.get("resources", []):
        path = root / entry
        _add_all(objs, _build(path, None) if path.is_dir() else _load(path), path)
    for entry in k.get("components", []):
        objs = _build(root / entry, objs)
    _generate(root, k, objs)
    for patch in k.get("patches", []):
        objs = _patch(root, patch, objs)
    for image in k.get("images", []):
        _set_image(objs, image)
    if "namespace" in k:
        for obj in objs:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = k["namespace"]
    return objs


def _load(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _ident(obj: Obj) -> tuple[str, str, str, str]:
    group = obj["apiVersion"].rpartition("/")[0]
    return group, obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def _add_all(objs: list[Obj], new: list[Obj], source: Path) -> None:
    seen = {_ident(o) for o in objs}
    for obj in new:
        if _ident(obj) in seen:
            raise ValueError(f"{source}: {_ident(obj)} is already defined")
        seen.add(_ident(obj))
        objs.append(obj)


# --- generators -------------------------------------------------------------

def _generate(root: Path, k: Obj, objs: list[Obj]) -> None:
    options = k.get("generatorOptions", {})
    if set(options) - {"disableNameSuffixHash"} or (
        (k.get("configMapGenerator") or k.get("secretGenerator")) and not options.get("disableNameSuffixHash")
    ):
        raise Unsupported(f"{root}: generators need generatorOptions.disableNameSuffixHash: true (no hashing here)")
    for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for gen in k.get(key, []):
            _run_generator(root, kind, gen, objs)


def _run_generator(root: Path, kind: str, gen: Obj, objs: list[Obj]) -> None:
    if set(gen) - {"name", "files", "literals", "behavior", "options"} or set(gen.get("options", {})) - {"labels"}:
        raise Unsupported(f"{root}: generator fields {sorted(gen)}")
    data: dict[str, str] = {}
    for entry in gen.get("files", []):
        name, _, rel = entry.rpartition("=") if "=" in entry else (Path(entry).name, "", entry)
        data[name] = (root / rel).read_text()
    for entry in gen.get("literals", []):
        name, _, value = entry.partition("=")
        data[name] = value
    behavior = gen.get("behavior", "create")
    existing = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == gen["name"]]
    if behavior == "create":
        if existing:
            raise ValueError(f"{root}: {kind} {gen['name']} exists; use behavior: merge or replace")
        obj: Obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": gen["name"]}}
        if kind == "Secret":
            obj["type"] = "Opaque"
        objs.append(obj)
    elif behavior in ("merge", "replace") and len(existing) == 1:
        obj = existing[0]
        if behavior == "replace":
            obj.pop("data", None)
    else:
        raise ValueError(f"{root}: {behavior} of {kind} {gen['name']}: found {len(existing)} to {behavior}")
    if kind == "Secret":
        data = {n: base64.b64encode(v.encode()).decode() for n, v in data.items()}
    obj.setdefault("data", {}).update(data)
    labels = gen.get("options", {}).get("labels")
    if labels:
        obj["metadata"].setdefault("labels", {}).update(labels)


# --- patches ----------------------------------------------------------------

def _patch(root: Path, spec: Obj, objs: list[Obj]) -> list[Obj]:
    if set(spec) - {"path", "patch", "target"}:
        raise Unsupported(f"{root}: patch fields {sorted(spec)}")
    text = (root / spec["path"]).read_text() if "path" in spec else spec["patch"]
    body = yaml.safe_load(text)
    target = spec.get("target")
    if isinstance(body, list):  # JSON 6902
        if target is None:
            raise ValueError(f"{root}: a JSON 6902 patch needs a target")
        for obj in _select(objs, target):
            for op in body:
                _json6902(obj, op)
        return objs
    if target is None:
        target = {"kind": body["kind"], "name": body["metadata"]["name"]}
    chosen = _select(objs, target)
    if body.get("$patch") == "delete":
        return [o for o in objs if all(o is not c for c in chosen)]
    # The patch's name and namespace say what it applies to; they change nothing.
    meta = {k: v for k, v in body.get("metadata", {}).items() if k not in ("name", "namespace")}
    for obj in chosen:
        _smp(obj, {k: v for k, v in body.items() if k not in ("apiVersion", "kind", "metadata")} | {"metadata": meta})
    return objs


def _select(objs: list[Obj], target: Obj) -> list[Obj]:
    if set(target) - {"kind", "name"}:
        raise Unsupported(f"patch target fields {sorted(target)}")
    chosen = [
        o for o in objs
        if ("kind" not in target or o["kind"] == target["kind"])
        and ("name" not in target or re.fullmatch(target["name"], o["metadata"]["name"]))
    ]
    if not chosen:
        raise ValueError(f"patch target {target} matches nothing")
    return chosen


def _smp(base: Obj, patch: Obj) -> None:
    for key, value in patch.items():
        if key == "$patch":
            raise Unsupported(f"$patch: {value} inside an object")
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            _smp(base[key], value)
        elif isinstance(value, list) and isinstance(base.get(key), list) and key in MERGE_KEYS:
            _merge_list(base[key], value, MERGE_KEYS[key])
        else:
            base[key] = copy.deepcopy(value)


def _merge_list(base: list[Obj], patch: list[Obj], merge_key: str) -> None:
    # kustomize (kyaml) puts the patch's items first, in the patch's order, each
    # merged into its match, then the items the patch does not mention.
    merged: list[Obj] = []
    named = {item[merge_key] for item in patch}
    for item in patch:
        match = next((b for b in base if b.get(merge_key) == item[merge_key]), None)
        if item.get("$patch") == "delete":
            continue
        if match is None:
            merged.append(copy.deepcopy(item))
        else:
            _smp(match, item)
            merged.append(match)
    merged.extend(b for b in base if b.get(merge_key) not in named)
    base[:] = merged


def _json6902(obj: Obj, op: Obj) -> None:
    kind = op["op"]
    if kind not in ("add", "replace", "remove"):
        raise Unsupported(f"JSON 6902 op {kind!r}")
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    parent: Any = obj
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if kind == "add":
            parent.insert(index, copy.deepcopy(op["value"]))
        elif kind == "replace":
            parent[index] = copy.deepcopy(op["value"])
        else:
            del parent[index]
    elif kind == "remove":
        del parent[last]
    else:
        if kind == "replace" and last not in parent:
            raise ValueError(f"JSON 6902 replace of missing {op['path']}")
        parent[last] = copy.deepcopy(op["value"])


# --- images -----------------------------------------------------------------

def _set_image(objs: list[Obj], image: Obj) -> None:
    if set(image) - {"name", "newName", "newTag"}:
        raise Unsupported(f"images fields {sorted(image)}")
    for container in _containers(objs):
        ref = container.get("image", "")
        name, tag = _split_image(ref)
        if name == image["name"]:
            new_tag = image.get("newTag", tag)
            container["image"] = image.get("newName", name) + (f":{new_tag}" if new_tag else "")


def _split_image(ref: str) -> tuple[str, str]:
    # A colon after the last slash separates the tag (one before it is a registry port).
    head, _, last = ref.rpartition("/")
    if ":" in last:
        last, _, tag = last.partition(":")
        return (f"{head}/{last}" if head else last), tag
    return ref, ""


def _containers(node: Any) -> list[Obj]:
    found: list[Obj] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                found.extend(c for c in value if isinstance(c, dict))
            else:
                found.extend(_containers(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_containers(item))
    return found
