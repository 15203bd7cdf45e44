"""KServe manifests: parsed, validated, and reduced to what the mesh acts on.

``parse_manifests(text)`` reads YAML or JSON (several documents, a JSON list, or a
``kind: List``) and returns validated resources; anything invalid is refused with
InvalidArgument naming the document, the field and what to do. Fields meshserve
does not implement are kept in the manifest and named in ``warnings``, never
dropped silently. The rules follow modelmesh-serving's
``pkg/predictor_source/inferenceservice_registry.go``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml

from mesh.errors import InvalidArgument

ISVC_API = "serving.kserve.io/v1beta1"
RUNTIME_API = "serving.kserve.io/v1alpha1"
INFERENCE_SERVICE = "InferenceService"
SERVING_RUNTIME = "ServingRuntime"
CLUSTER_SERVING_RUNTIME = "ClusterServingRuntime"
API_VERSIONS = {INFERENCE_SERVICE: ISVC_API, SERVING_RUNTIME: RUNTIME_API, CLUSTER_SERVING_RUNTIME: RUNTIME_API}
#: What ``meshserve get`` / ``delete`` accept for each kind (kubectl's names and short names).
KIND_ALIASES = {
    "isvc": INFERENCE_SERVICE, "inferenceservice": INFERENCE_SERVICE, "inferenceservices": INFERENCE_SERVICE,
    "servingruntime": SERVING_RUNTIME, "servingruntimes": SERVING_RUNTIME,
    "clusterservingruntime": CLUSTER_SERVING_RUNTIME, "clusterservingruntimes": CLUSTER_SERVING_RUNTIME,
}

#: The legacy per-framework predictor fields and the model format each names.
FRAMEWORKS = {"sklearn": "sklearn", "xgboost": "xgboost", "lightgbm": "lightgbm", "tensorflow": "tensorflow",
              "onnx": "onnx", "pytorch": "pytorch", "triton": "triton", "pmml": "pmml", "paddle": "paddle"}
STORAGE_SCHEMES = ("s3", "gs", "pvc", "http", "https")
RUNTIME_ANNOTATION = "serving.kserve.io/servingRuntime"
SECRET_KEY_ANNOTATION = "serving.kserve.io/secretKey"
SCHEMA_PATH_ANNOTATION = "serving.kserve.io/schemaPath"
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
#: InferenceService names: a DNS-1035 label, as KServe requires (it becomes the vmodel id).
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME = 63
#: ServingRuntime names: a DNS-1123 subdomain (e.g. ``mlserver-1.x``), kept label-sized
#: because runtimes carry it as the label ``runtime=<name>``.
_RUNTIME_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")

_MODEL_FIELDS = {"modelFormat", "storageUri", "storage", "runtime", "protocolVersion"}
_WHY = {
    "resources": "models share the runtime's memory on a multi-model predictor; size the runtimes instead",
    "transformer": "transformers are not implemented; send pre-processed inputs",
    "explainer": "explainers are not implemented",
}


@dataclass(frozen=True, slots=True)
class InferenceService:
    name: str
    namespace: str
    manifest: dict[str, Any]
    #: Model format name (the model type registered), lower case.
    format: str
    format_version: str = ""
    #: ServingRuntime it is pinned to ("" = chosen by supportedModelFormats / autoSelect).
    runtime: str = ""
    protocol_version: str = ""
    storage_uri: str = ""
    storage_path: str = ""
    storage_key: str = ""
    storage_params: Mapping[str, str] = field(default_factory=dict)
    schema_path: str = ""
    warnings: tuple[str, ...] = ()
    kind: str = INFERENCE_SERVICE
    #: ``spec.predictor.canaryTrafficPercent``: the share of traffic the new spec gets
    #: while the last rolled-out one keeps the rest (None: all of it, once loaded).
    canary_percent: int | None = None


@dataclass(frozen=True, slots=True)
class ModelFormat:
    name: str
    version: str = ""
    auto_select: bool = False


@dataclass(frozen=True, slots=True)
class ServingRuntime:
    kind: str
    name: str
    namespace: str
    manifest: dict[str, Any]
    formats: tuple[ModelFormat, ...] = ()
    multi_model: bool = False
    disabled: bool = False
    warnings: tuple[str, ...] = ()

    def supports(self, fmt: str, version: str = "", *, auto_only: bool) -> bool:
        """Lists the format (and the version, when the model names one); ``auto_only``:
        only entries with ``autoSelect: true`` count (a model that names no runtime)."""
        return any(f.name == fmt and (not version or f.version == version) and (f.auto_select or not auto_only)
                   for f in self.formats)


Resource = InferenceService | ServingRuntime


def load_documents(text: str) -> list[Any]:
    """YAML or JSON documents; a JSON list or ``kind: List`` is unpacked; empty documents skipped."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise InvalidArgument(f"the manifests are not valid YAML or JSON: {e}") from None
    out: list[Any] = []
    for d in docs:
        if isinstance(d, list):
            out.extend(d)
        elif isinstance(d, dict) and d.get("kind") == "List" and isinstance(d.get("items"), list):
            out.extend(d["items"])
        else:
            out.append(d)
    return out


def parse_manifests(text: str) -> list[Resource]:
    """Every resource in ``text``, validated; InvalidArgument lists each invalid one."""
    docs = load_documents(text)
    if not docs:
        raise InvalidArgument("no resources found: give InferenceService, ServingRuntime or "
                              "ClusterServingRuntime manifests (YAML or JSON)")
    out: list[Resource] = []
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    for i, doc in enumerate(docs, 1):
        try:
            r = parse_resource(doc)
        except InvalidArgument as e:
            problems.append(f"document {i}: {e}")
            continue
        if (r.kind, r.name) in seen:
            problems.append(f"document {i}: {r.kind} {r.name!r} appears twice; keep one")
        seen.add((r.kind, r.name))
        out.append(r)
    if problems:
        raise InvalidArgument("nothing was applied: " + "; ".join(problems))
    return out


def parse_resource(doc: Any) -> Resource:
    """One manifest as a dict; InvalidArgument names the kind / field that is wrong."""
    if not isinstance(doc, dict):
        raise InvalidArgument(f"a manifest must be a mapping with apiVersion, kind, metadata and spec, "
                              f"not {type(doc).__name__}")
    kind = doc.get("kind")
    if kind not in API_VERSIONS:
        raise InvalidArgument(f"kind {kind!r} is not supported: meshserve applies "
                              f"{', '.join(API_VERSIONS)} (serving.kserve.io)")
    api = doc.get("apiVersion")
    if api != API_VERSIONS[kind]:
        raise InvalidArgument(f"{kind}: apiVersion {api!r} is not supported: use {API_VERSIONS[kind]}")
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        raise InvalidArgument(f"{kind}: metadata is required (with a name)")
    name = meta.get("name")
    where = f"{kind} {name!r}" if isinstance(name, str) else kind
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"{kind}: metadata.name is required")
    if kind == INFERENCE_SERVICE and (len(name) > MAX_NAME or not _NAME.match(name)):
        raise InvalidArgument(
            f"{where}: metadata.name is invalid: use at most {MAX_NAME} lower-case letters, digits and '-', "
            "starting with a letter and ending with a letter or digit")
    if kind != INFERENCE_SERVICE and (len(name) > MAX_NAME or not _RUNTIME_NAME.match(name) or ".." in name):
        raise InvalidArgument(
            f"{where}: metadata.name is invalid: use at most {MAX_NAME} lower-case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit")
    namespace = meta.get("namespace", "")
    if not isinstance(namespace, str):
        raise InvalidArgument(f"{where}: metadata.namespace must be a string")
    manifest = {k: v for k, v in doc.items() if k != "status"}
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        raise InvalidArgument(f"{where}: spec is required")
    if kind == INFERENCE_SERVICE:
        return _inference_service(name, namespace, meta, spec, manifest, where)
    return _serving_runtime(kind, name, namespace, spec, manifest, where)


def _str(value: Any, path: str, where: str, *, required: bool = False) -> str:
    if value is None:
        if required:
            raise InvalidArgument(f"{where}: {path} is required")
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise InvalidArgument(f"{where}: {path} must be a non-empty string")
    return value.strip()


def _inference_service(name: str, namespace: str, meta: dict[str, Any], spec: dict[str, Any],
                       manifest: dict[str, Any], where: str) -> InferenceService:
    warnings: list[str] = []
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise InvalidArgument(f"{where}: metadata.annotations must be a mapping")
    mode = annotations.get(DEPLOYMENT_MODE_ANNOTATION)
    if mode not in (None, "ModelMesh"):
        warnings.append(f"metadata.annotations[{DEPLOYMENT_MODE_ANNOTATION}]={mode!r} is ignored: meshserve serves "
                        "every InferenceService applied to it as a multi-model (ModelMesh) predictor")
    for other in sorted(set(spec) - {"predictor"}):
        warnings.append(_ignored(f"spec.{other}", other))
    predictor = spec.get("predictor")
    if not isinstance(predictor, dict):
        raise InvalidArgument(f"{where}: spec.predictor is required")
    frameworks = [k for k in FRAMEWORKS if k in predictor]
    model = predictor.get("model")
    if model is not None and frameworks:
        raise InvalidArgument(f"{where}: spec.predictor has both model and {frameworks[0]}: use spec.predictor.model "
                              "with modelFormat alone")
    if len(frameworks) > 1:
        raise InvalidArgument(f"{where}: spec.predictor has {' and '.join(frameworks)}: give one")
    runtime_annotation = _str(annotations.get(RUNTIME_ANNOTATION), f"metadata.annotations[{RUNTIME_ANNOTATION}]",
                              where)
    if model is not None:
        base = "spec.predictor.model"
        if not isinstance(model, dict):
            raise InvalidArgument(f"{where}: {base} must be a mapping")
        if runtime_annotation:
            raise InvalidArgument(f"{where}: {base} and the annotation {RUNTIME_ANNOTATION} both choose a runtime: "
                                  f"use {base}.runtime")
        fmt = model.get("modelFormat")
        if not isinstance(fmt, dict):
            raise InvalidArgument(f"{where}: {base}.modelFormat is required (e.g. modelFormat: {{name: sklearn}})")
        format_name = _str(fmt.get("name"), f"{base}.modelFormat.name", where, required=True).lower()
        format_version = _str(fmt.get("version"), f"{base}.modelFormat.version", where)
        runtime = _str(model.get("runtime"), f"{base}.runtime", where)
        body = model
    elif frameworks:
        base = f"spec.predictor.{frameworks[0]}"
        body = predictor[frameworks[0]]
        if not isinstance(body, dict):
            raise InvalidArgument(f"{where}: {base} must be a mapping")
        format_name, format_version, runtime = FRAMEWORKS[frameworks[0]], "", runtime_annotation
        if "runtimeVersion" in body:
            warnings.append(_ignored(f"{base}.runtimeVersion", "runtimeVersion"))
    else:
        raise InvalidArgument(f"{where}: spec.predictor.model is required (modelFormat and storageUri), or one of "
                              f"the framework fields {', '.join(FRAMEWORKS)}")
    canary = predictor.get("canaryTrafficPercent")
    if canary is not None and (isinstance(canary, bool) or not isinstance(canary, int) or not 0 <= canary <= 100):
        raise InvalidArgument(f"{where}: spec.predictor.canaryTrafficPercent must be a whole number from 0 to 100")
    for other in sorted(set(predictor) - {"model", "canaryTrafficPercent", *frameworks}):
        warnings.append(_ignored(f"spec.predictor.{other}", other))
    for other in sorted(set(body) - _MODEL_FIELDS - {"runtimeVersion"}):
        warnings.append(_ignored(f"{base}.{other}", other))
    protocol = _str(body.get("protocolVersion"), f"{base}.protocolVersion", where)
    storage = _storage(body, base, where, annotations)
    return InferenceService(name, namespace, manifest, format_name, format_version, runtime, protocol,
                            warnings=tuple(warnings), canary_percent=canary, **storage)


def _storage(body: dict[str, Any], base: str, where: str, annotations: dict[str, Any]) -> dict[str, Any]:
    uri = _str(body.get("storageUri"), f"{base}.storageUri", where)
    storage = body.get("storage")
    if storage is not None and not isinstance(storage, dict):
        raise InvalidArgument(f"{where}: {base}.storage must be a mapping (key, path, parameters, schemaPath)")
    storage = storage or {}
    path = _str(storage.get("path"), f"{base}.storage.path", where)
    if uri and path:
        raise InvalidArgument(f"{where}: {base} has both storageUri and storage.path: give one")
    if not uri and not path:
        raise InvalidArgument(f"{where}: {base}.storageUri is required (or storage.path with storage.key): "
                              "where the model's files are, e.g. s3://bucket/models/iris")
    if uri:
        scheme = urlsplit(uri).scheme.lower()
        if scheme not in STORAGE_SCHEMES or not urlsplit(uri).netloc:
            raise InvalidArgument(f"{where}: {base}.storageUri {uri!r} is not supported: use s3://BUCKET/path, "
                                  "gs://BUCKET/path, pvc://NAME/path or http(s)://HOST/path")
    params = storage.get("parameters") or {}
    if not isinstance(params, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in params.items()):
        raise InvalidArgument(f"{where}: {base}.storage.parameters must map strings to strings")
    unknown = sorted(set(storage) - {"key", "path", "parameters", "schemaPath"})
    if unknown:
        raise InvalidArgument(f"{where}: {base}.storage.{unknown[0]} is not a storage field: use key, path, "
                              "parameters and schemaPath")
    key = _str(storage.get("key"), f"{base}.storage.key", where) or _str(
        annotations.get(SECRET_KEY_ANNOTATION), f"metadata.annotations[{SECRET_KEY_ANNOTATION}]", where)
    schema = _str(storage.get("schemaPath"), f"{base}.storage.schemaPath", where) or _str(
        annotations.get(SCHEMA_PATH_ANNOTATION), f"metadata.annotations[{SCHEMA_PATH_ANNOTATION}]", where)
    return {"storage_uri": uri, "storage_path": path, "storage_key": key, "storage_params": dict(params),
            "schema_path": schema}


def _ignored(path: str, name: str) -> str:
    why = _WHY.get(name, "meshserve does not implement it")
    return f"{path} is ignored: {why}"


def _serving_runtime(kind: str, name: str, namespace: str, spec: dict[str, Any], manifest: dict[str, Any],
                     where: str) -> ServingRuntime:
    formats_in = spec.get("supportedModelFormats")
    if not isinstance(formats_in, list) or not formats_in:
        raise InvalidArgument(f"{where}: spec.supportedModelFormats is required: a list of "
                              "{name, version?, autoSelect?}")
    formats = []
    for i, f in enumerate(formats_in):
        path = f"spec.supportedModelFormats[{i}]"
        if not isinstance(f, dict):
            raise InvalidArgument(f"{where}: {path} must be a mapping with a name")
        auto = f.get("autoSelect", False)
        if not isinstance(auto, bool):
            raise InvalidArgument(f"{where}: {path}.autoSelect must be true or false")
        version = f.get("version")
        formats.append(ModelFormat(_str(f.get("name"), f"{path}.name", where, required=True).lower(),
                                   "" if version is None else str(version), auto))
    multi, disabled = spec.get("multiModel", False), spec.get("disabled", False)
    for flag, value in (("multiModel", multi), ("disabled", disabled)):
        if not isinstance(value, bool):
            raise InvalidArgument(f"{where}: spec.{flag} must be true or false")
    warnings = []
    if not multi:
        warnings.append("spec.multiModel is not true: meshserve hosts only multi-model runtimes, so no model "
                        "will be placed by this runtime")
    for other in sorted(set(spec) & {"containers", "builtInAdapter", "volumes", "grpcEndpoint",
                                     "grpcDataEndpoint", "replicas", "storageHelper"}):
        warnings.append(f"spec.{other} is ignored: meshserve's runtimes are started by the operator "
                        "(meshserve runtime --labels runtime=NAME)")
    return ServingRuntime(kind, name, namespace, manifest, tuple(formats), multi, disabled, tuple(warnings))
