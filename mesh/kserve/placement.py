"""ServingRuntimes as placement data: which runtime instances may host a model.

A runtime instance labelled ``runtime=<name>`` (``meshserve runtime --labels
runtime=<name>``) belongs to the ServingRuntime (or ClusterServingRuntime) of that
name, once one is applied: it then hosts InferenceService models of the formats the
ServingRuntime lists (``supportedModelFormats``; without a pinned ``runtime:`` only
entries with ``autoSelect: true``, as in KServe), and only if it is
``multiModel: true`` and not ``disabled``. Instances that belong to no applied
ServingRuntime host models by their own model types, as for plain registrations.
A model that pins ``runtime: X`` goes only to instances labelled ``runtime=X``.

Pure functions over frozen views (mesh/policy/view.py); the router wraps its
placement policy with :func:`with_serving_runtimes`, and the status mapping asks
:func:`support` why a model has nowhere to go.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from mesh.kserve.resources import SERVING_RUNTIME, InferenceService, ServingRuntime
from mesh.kserve.translate import FORMAT_LABEL, FORMAT_VERSION_LABEL, REQUIRE_RUNTIME, RUNTIME_LABEL
from mesh.model_types import canonical_model_type
from mesh.policy.placement import PlacementPolicy
from mesh.policy.view import ClusterView, InstanceView, ModelView

Runtimes = Mapping[str, ServingRuntime]

# Failure reasons, as KServe's FailureReason names them.
NO_SUPPORTING_RUNTIME = "NoSupportingRuntime"
RUNTIME_NOT_RECOGNIZED = "RuntimeNotRecognized"
RUNTIME_UNHEALTHY = "RuntimeUnhealthy"
RUNTIME_DISABLED = "RuntimeDisabled"


@dataclass(frozen=True, slots=True)
class Need:
    """What an InferenceService model asks of a runtime."""

    format: str
    version: str = ""
    #: Pinned ServingRuntime name ("" = any that auto-selects the format).
    runtime: str = ""

    @classmethod
    def of_labels(cls, labels: Mapping[str, str]) -> "Need | None":
        """From an InferenceService model's labels; None for other models."""
        fmt = labels.get(FORMAT_LABEL)
        if not fmt:
            return None
        return cls(fmt, labels.get(FORMAT_VERSION_LABEL, ""), labels.get(REQUIRE_RUNTIME, ""))

    @classmethod
    def of(cls, isvc: InferenceService) -> "Need":
        return cls(isvc.format, isvc.format_version, isvc.runtime)


@dataclass(frozen=True, slots=True)
class Support:
    #: "" when some running instance can host the model; else a KServe failure reason.
    reason: str = ""
    message: str = ""

    @property
    def waiting(self) -> bool:
        """A ServingRuntime supports it but none of its instances runs (ModelMesh: Loading)."""
        return self.reason == RUNTIME_UNHEALTHY


def runtime_index(runtimes: Iterable[ServingRuntime]) -> dict[str, ServingRuntime]:
    """By name; a (namespaced) ServingRuntime wins over a ClusterServingRuntime of the same name."""
    out: dict[str, ServingRuntime] = {}
    for r in sorted(runtimes, key=lambda r: r.kind == SERVING_RUNTIME):
        out[r.name] = r
    return out


def _serves(sr: ServingRuntime, need: Need, *, auto_only: bool) -> bool:
    return sr.multi_model and not sr.disabled and sr.supports(need.format, need.version, auto_only=auto_only)


def _can_load(inst: InstanceView, need: Need) -> bool:
    # Runtimes advertise canonical type names; a format may be spelled otherwise (scikit-learn).
    return not inst.model_types or canonical_model_type(need.format) in inst.model_types


def hosts(need: Need, runtimes: Runtimes, instances: Iterable[InstanceView]) -> list[InstanceView]:
    """The instances that may host a model with this need (before capacity and health)."""
    out = []
    for inst in instances:
        label = inst.labels.get(RUNTIME_LABEL, "")
        sr = runtimes.get(label) if label else None
        if need.runtime:
            ok = label == need.runtime and (sr is None or _serves(sr, need, auto_only=False))
        elif sr is not None:
            ok = _serves(sr, need, auto_only=True)
        else:
            ok = True
        if ok and _can_load(inst, need):
            out.append(inst)
    return out


def support(need: Need, runtimes: Runtimes, instances: Iterable[InstanceView]) -> Support:
    """Why no running instance can host the model (ModelMesh's decodeModelState reasons)."""
    up = [i for i in instances if not i.shutting_down]
    if hosts(need, runtimes, up):
        return Support()
    fmt = need.format + (f" version {need.version}" if need.version else "")
    if need.runtime:
        sr = runtimes.get(need.runtime)
        if sr is None:
            return Support(RUNTIME_NOT_RECOGNIZED, f"Specified runtime name not recognized: no ServingRuntime "
                           f"{need.runtime!r} is applied and no runtime is labelled runtime={need.runtime}")
        if sr.disabled:
            return Support(RUNTIME_DISABLED, f"ServingRuntime {need.runtime!r} is disabled")
        if not sr.multi_model:
            return Support(RUNTIME_NOT_RECOGNIZED, f"ServingRuntime {need.runtime!r} is not multiModel: true; "
                           "meshserve hosts only multi-model runtimes")
        if not sr.supports(need.format, need.version, auto_only=False):
            return Support(NO_SUPPORTING_RUNTIME, f"ServingRuntime {need.runtime!r} does not support model "
                           f"format {fmt} (its supportedModelFormats)")
        return Support(RUNTIME_UNHEALTHY, f"Waiting for supporting runtime to become available: no running "
                       f"runtime is labelled runtime={need.runtime} and can load {need.format}")
    candidates = sorted(n for n, sr in runtimes.items() if _serves(sr, need, auto_only=True))
    if candidates:
        return Support(RUNTIME_UNHEALTHY, "Waiting for supporting runtime to become available: no running "
                       f"runtime is labelled runtime={' or runtime='.join(candidates)}")
    return Support(NO_SUPPORTING_RUNTIME, f"No ServingRuntime supports specified model type and/or protocol: "
                   f"no running runtime can load model format {fmt} (no ServingRuntime lists it with "
                   "autoSelect: true, and no runtime outside a ServingRuntime loads it)")


def with_serving_runtimes(policy: PlacementPolicy, runtimes: Callable[[], Runtimes]) -> PlacementPolicy:
    """Wraps ``policy`` so an InferenceService model sees only the instances that may host it."""

    def constrained(view: ClusterView, model: ModelView) -> list[str]:
        need = Need.of_labels(model.labels)
        if need is None:
            return policy(view, model)
        allowed = tuple(hosts(need, runtimes(), view.instances))
        return policy(dataclasses.replace(view, instances=allowed), model)

    return constrained
