from mesh.proto.mmesh import model_mesh_pb2 as _model_mesh_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListModelsRequest(_message.Message):
    __slots__ = ("prefix", "page_size", "page_token")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    page_size: int
    page_token: str
    def __init__(self, prefix: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class CopyInfo(_message.Message):
    __slots__ = ("instance_id", "state", "since_ms", "size_bytes")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    state: str
    since_ms: int
    size_bytes: int
    def __init__(self, instance_id: _Optional[str] = ..., state: _Optional[str] = ..., since_ms: _Optional[int] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class ModelSummary(_message.Message):
    __slots__ = ("model_id", "type", "path", "status", "size_bytes", "registered_ms", "last_used_ms", "copies", "labels", "min_copies", "max_copies", "errors")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_MS_FIELD_NUMBER: _ClassVar[int]
    COPIES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MIN_COPIES_FIELD_NUMBER: _ClassVar[int]
    MAX_COPIES_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    type: str
    path: str
    status: str
    size_bytes: int
    registered_ms: int
    last_used_ms: int
    copies: _containers.RepeatedCompositeFieldContainer[CopyInfo]
    labels: _containers.ScalarMap[str, str]
    min_copies: int
    max_copies: int
    errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model_id: _Optional[str] = ..., type: _Optional[str] = ..., path: _Optional[str] = ..., status: _Optional[str] = ..., size_bytes: _Optional[int] = ..., registered_ms: _Optional[int] = ..., last_used_ms: _Optional[int] = ..., copies: _Optional[_Iterable[_Union[CopyInfo, _Mapping]]] = ..., labels: _Optional[_Mapping[str, str]] = ..., min_copies: _Optional[int] = ..., max_copies: _Optional[int] = ..., errors: _Optional[_Iterable[str]] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelSummary]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetClusterStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InstanceStatus(_message.Message):
    __slots__ = ("instance_id", "endpoint", "capacity_bytes", "used_bytes", "model_count", "loads_in_progress", "shutting_down", "zone", "labels", "oldest_lru_ms", "model_ids", "metrics_endpoint", "version", "start_ms")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_COUNT_FIELD_NUMBER: _ClassVar[int]
    LOADS_IN_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SHUTTING_DOWN_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    OLDEST_LRU_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_IDS_FIELD_NUMBER: _ClassVar[int]
    METRICS_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    START_MS_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    endpoint: str
    capacity_bytes: int
    used_bytes: int
    model_count: int
    loads_in_progress: int
    shutting_down: bool
    zone: str
    labels: _containers.ScalarMap[str, str]
    oldest_lru_ms: int
    model_ids: _containers.RepeatedScalarFieldContainer[str]
    metrics_endpoint: str
    version: str
    start_ms: int
    def __init__(self, instance_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., capacity_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., model_count: _Optional[int] = ..., loads_in_progress: _Optional[int] = ..., shutting_down: _Optional[bool] = ..., zone: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., oldest_lru_ms: _Optional[int] = ..., model_ids: _Optional[_Iterable[str]] = ..., metrics_endpoint: _Optional[str] = ..., version: _Optional[str] = ..., start_ms: _Optional[int] = ...) -> None: ...

class ClusterStatus(_message.Message):
    __slots__ = ("instances", "registered_models", "loaded_copies", "capacity_bytes", "used_bytes")
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_MODELS_FIELD_NUMBER: _ClassVar[int]
    LOADED_COPIES_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    instances: _containers.RepeatedCompositeFieldContainer[InstanceStatus]
    registered_models: int
    loaded_copies: int
    capacity_bytes: int
    used_bytes: int
    def __init__(self, instances: _Optional[_Iterable[_Union[InstanceStatus, _Mapping]]] = ..., registered_models: _Optional[int] = ..., loaded_copies: _Optional[int] = ..., capacity_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Policy(_message.Message):
    __slots__ = ("document", "revision")
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    document: str
    revision: int
    def __init__(self, document: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class SetPolicyRequest(_message.Message):
    __slots__ = ("document", "expected_revision", "validate_only")
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    document: str
    expected_revision: int
    validate_only: bool
    def __init__(self, document: _Optional[str] = ..., expected_revision: _Optional[int] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class DrainInstanceRequest(_message.Message):
    __slots__ = ("instance_id",)
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    def __init__(self, instance_id: _Optional[str] = ...) -> None: ...

class DrainInstanceResponse(_message.Message):
    __slots__ = ("instance_id", "model_ids")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_IDS_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    model_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, instance_id: _Optional[str] = ..., model_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SetModelConfigRequest(_message.Message):
    __slots__ = ("model_id", "min_copies", "max_copies", "labels", "keep_labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_COPIES_FIELD_NUMBER: _ClassVar[int]
    MAX_COPIES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    KEEP_LABELS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    min_copies: int
    max_copies: int
    labels: _containers.ScalarMap[str, str]
    keep_labels: bool
    def __init__(self, model_id: _Optional[str] = ..., min_copies: _Optional[int] = ..., max_copies: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., keep_labels: _Optional[bool] = ...) -> None: ...

class SplitTarget(_message.Message):
    __slots__ = ("model_id", "weight")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    weight: int
    def __init__(self, model_id: _Optional[str] = ..., weight: _Optional[int] = ...) -> None: ...

class SetTrafficSplitRequest(_message.Message):
    __slots__ = ("vmodel_id", "targets", "owner", "sync")
    VMODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SYNC_FIELD_NUMBER: _ClassVar[int]
    vmodel_id: str
    targets: _containers.RepeatedCompositeFieldContainer[SplitTarget]
    owner: str
    sync: bool
    def __init__(self, vmodel_id: _Optional[str] = ..., targets: _Optional[_Iterable[_Union[SplitTarget, _Mapping]]] = ..., owner: _Optional[str] = ..., sync: _Optional[bool] = ...) -> None: ...

class ApplyResourcesRequest(_message.Message):
    __slots__ = ("manifests",)
    MANIFESTS_FIELD_NUMBER: _ClassVar[int]
    manifests: str
    def __init__(self, manifests: _Optional[str] = ...) -> None: ...

class GetResourcesRequest(_message.Message):
    __slots__ = ("kind", "name")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class DeleteResourcesRequest(_message.Message):
    __slots__ = ("manifests", "kind", "name")
    MANIFESTS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    manifests: str
    kind: str
    name: str
    def __init__(self, manifests: _Optional[str] = ..., kind: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class Resource(_message.Message):
    __slots__ = ("kind", "name", "namespace", "outcome", "warnings", "object_json")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    OBJECT_JSON_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    namespace: str
    outcome: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    object_json: str
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., namespace: _Optional[str] = ..., outcome: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ..., object_json: _Optional[str] = ...) -> None: ...

class ResourcesResponse(_message.Message):
    __slots__ = ("resources",)
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    resources: _containers.RepeatedCompositeFieldContainer[Resource]
    def __init__(self, resources: _Optional[_Iterable[_Union[Resource, _Mapping]]] = ...) -> None: ...
