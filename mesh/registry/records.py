"""Typed registry records, stored as JSON with a schema version.

Records are frozen: change one with :func:`dataclasses.replace`. Unknown JSON
fields are ignored (a newer writer may add some); a value that is not a JSON
object of the right shape raises :class:`~mesh.errors.CorruptRecord`, which
readers log and skip.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from mesh.errors import CorruptRecord

SCHEMA_VERSION = 1

# Copy states.
LOADING = "LOADING"
LOADED = "LOADED"
FAILED = "FAILED"
COPY_STATES = (LOADING, LOADED, FAILED)


@dataclass(frozen=True, slots=True)
class LoadFailure:
    instance_id: str
    at_ms: int
    reason: str


@dataclass(frozen=True, slots=True)
class ModelRecord:
    model_id: str
    type: str
    path: str = ""
    key: str = ""
    #: Predicted before the first load, then the measured size.
    size_bytes: int = 0
    size_measured: bool = False
    registered_ms: int = 0
    last_used_ms: int = 0
    failures: tuple[LoadFailure, ...] = ()
    #: Number of vmodels pointing at this model.
    refs: int = 0
    #: Delete this model once no vmodel refers to it any more.
    auto_delete: bool = False
    min_copies: int = 0
    #: 0 means no limit.
    max_copies: int = 0
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VModelRecord:
    vmodel_id: str
    active_model: str
    target_model: str
    owner: str = ""
    #: DEFINED, TRANSITIONING or TRANSITION_FAILED.
    status: str = "DEFINED"
    auto_delete_target: bool = False
    updated_ms: int = 0
    error: str = ""
    #: Weighted targets (model id -> weight) when the vmodel splits traffic; empty: all to active_model.
    split: dict[str, int] = field(default_factory=dict)
    #: A split waiting for its targets to load (status TRANSITIONING); then it becomes ``split``.
    pending_split: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    instance_id: str
    #: HOST:PORT that routers dial.
    endpoint: str
    metrics_endpoint: str = ""
    #: etcd lease the instance's keys live under; routers claim copies with it.
    lease_id: int = 0
    capacity_bytes: int = 0
    used_bytes: int = 0
    model_count: int = 0
    #: ms epoch of the least recently used loaded model (0 if none).
    oldest_lru_ms: int = 0
    loading_threads: int = 0
    loads_in_progress: int = 0
    requests_per_min: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    zone: str = ""
    #: Model types this runtime can load (e.g. onnx, pytorch).
    model_types: tuple[str, ...] = ()
    device: str = "cpu"
    shutting_down: bool = False
    version: str = ""
    start_ms: int = 0


@dataclass(frozen=True, slots=True)
class CopyRecord:
    model_id: str
    instance_id: str
    state: str = LOADING
    since_ms: int = 0
    size_bytes: int = 0
    error: str = ""


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    #: The policy document (validated by the policy module before it is stored).
    document: dict[str, Any] = field(default_factory=dict)
    updated_ms: int = 0


@dataclass(frozen=True, slots=True)
class ResourceRecord:
    """A KServe resource applied to the mesh (``meshserve apply``; mesh/kserve/)."""

    #: InferenceService, ServingRuntime or ClusterServingRuntime.
    kind: str
    name: str
    namespace: str = ""
    api_version: str = ""
    #: The manifest as applied, without ``status`` (what ``get`` shows back).
    manifest: dict[str, Any] = field(default_factory=dict)
    #: Fields meshserve ignores, named for the user at every apply and get.
    warnings: tuple[str, ...] = ()
    #: Bumped when the spec changes (Kubernetes' metadata.generation).
    generation: int = 1
    applied_ms: int = 0
    #: InferenceService: the concrete model that last got all the traffic (a canary's
    #: ``canaryTrafficPercent`` splits between it and the new spec's model).
    rolled_out_model: str = ""


Record = ModelRecord | VModelRecord | InstanceRecord | CopyRecord | PolicyRecord | ResourceRecord
R = TypeVar("R", ModelRecord, VModelRecord, InstanceRecord, CopyRecord, PolicyRecord, ResourceRecord)

_TUPLE_FIELDS = {"failures", "model_types", "warnings"}


_FIELDS: dict[type[Any], frozenset[str]] = {}


def _field_names(cls: type[Any]) -> frozenset[str]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = frozenset(f.name for f in dataclasses.fields(cls))
    return names


def encode(record: Record) -> bytes:
    # A shallow dict (asdict deep-copies, and costs more than the JSON): the values are
    # JSON-ready but for the nested LoadFailure records.
    data = {name: getattr(record, name) for name in _field_names(type(record))}
    if "failures" in data:
        data["failures"] = [{"instance_id": f.instance_id, "at_ms": f.at_ms, "reason": f.reason}
                            for f in data["failures"]]
    data["v"] = SCHEMA_VERSION
    # orjson: the same compact, key-sorted JSON at a fraction of json's cost (a fleet's
    # registration encodes every record once, every mirror decodes it once).
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


def decode(cls: type[R], raw: bytes) -> R:
    """Decodes a record, raising CorruptRecord (with the reason) on bad data."""
    try:
        data = orjson.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:  # orjson.JSONDecodeError is a ValueError
        raise CorruptRecord(f"{cls.__name__}: value is not JSON ({e})") from None
    if not isinstance(data, dict):
        raise CorruptRecord(f"{cls.__name__}: value is not a JSON object")
    version = data.pop("v", None)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise CorruptRecord(
            f"{cls.__name__}: schema version {version!r} is not understood "
            f"(this build reads <= {SCHEMA_VERSION})"
        )
    names = _field_names(cls)
    kwargs = {k: v for k, v in data.items() if k in names}
    try:
        if "failures" in kwargs:
            kwargs["failures"] = tuple(LoadFailure(**f) for f in kwargs["failures"])
        for name in _TUPLE_FIELDS & kwargs.keys() - {"failures"}:
            kwargs[name] = tuple(kwargs[name])
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise CorruptRecord(f"{cls.__name__}: {e}") from None
