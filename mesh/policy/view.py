"""The frozen picture of the cluster that placement policies decide on.

Built from the registry mirror at the moment of a decision; policies are plain
functions of it, so an operator can unit-test a tuning without etcd.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mesh.registry import records as rec


@dataclass(frozen=True, slots=True)
class InstanceView:
    instance_id: str
    capacity_bytes: int
    used_bytes: int
    model_count: int = 0
    #: ms epoch of the least recently used model there (0: none loaded).
    oldest_lru_ms: int = 0
    loads_in_progress: int = 0
    requests_per_min: int = 0
    shutting_down: bool = False
    #: Model types it can load; empty means any.
    model_types: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    zone: str = ""
    device: str = "cpu"
    version: str = ""

    @property
    def free_bytes(self) -> int:
        return max(0, self.capacity_bytes - self.used_bytes)

    @classmethod
    def of(cls, r: rec.InstanceRecord, *, draining: bool = False) -> "InstanceView":
        return cls(
            r.instance_id, r.capacity_bytes, r.used_bytes, r.model_count, r.oldest_lru_ms,
            r.loads_in_progress, r.requests_per_min, r.shutting_down or draining,
            tuple(r.model_types), dict(r.labels), r.zone, r.device, r.version,
        )


@dataclass(frozen=True, slots=True)
class ModelView:
    model_id: str
    type: str
    #: Predicted or measured bytes (0: unknown).
    size_bytes: int
    #: Instances holding a copy (any state).
    copies: frozenset[str] = frozenset()
    #: Instances where a load failed recently.
    failed_on: frozenset[str] = frozenset()
    #: Labels an instance must carry (e.g. {"device": "gpu"}).
    required_labels: Mapping[str, str] = field(default_factory=dict)
    #: All the model's labels (e.g. an InferenceService's ``kserve.format``).
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClusterView:
    instances: tuple[InstanceView, ...]
    now_ms: int
