"""The frozen picture Envoy's routes are built from: who holds which model, loaded.

Built from the registry mirror at one moment. Only LOADED copies on instances
that are still registered count (a copy whose instance's lease expired is gone
with it). Like the router's own hot path (``RoutingTable.loaded_on``), copies on
a shutting-down instance are used only when no other copy is left.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mesh.registry import records as rec
from mesh.registry.mirror import RegistryMirror


@dataclass(frozen=True, slots=True)
class XdsView:
    #: instance id -> HOST:PORT, for every instance holding a routed copy.
    endpoints: Mapping[str, str]
    #: model id -> the instances (sorted) holding a usable LOADED copy.
    models: Mapping[str, tuple[str, ...]]
    #: vmodel id -> its active (concrete) model, every vmodel (routed straight when that
    #: model is in ``models``, else to the router). "" for a vmodel with a traffic split:
    #: the router draws each request's target (weights, ``mm-split-key``).
    vmodels: Mapping[str, str]


def view_of(mirror: RegistryMirror) -> XdsView:
    instances = mirror.instances
    models: dict[str, tuple[str, ...]] = {}
    for model_id, copies in mirror.copies.items():
        if model_id not in mirror.models:
            continue
        loaded = [i for i, c in copies.items() if c.state == rec.LOADED and i in instances]
        live = [i for i in loaded if not instances[i].shutting_down] or loaded
        if live:
            models[model_id] = tuple(sorted(live))
    used = {i for holders in models.values() for i in holders}
    return XdsView(
        endpoints={i: instances[i].endpoint for i in sorted(used)},
        models=dict(sorted(models.items())),
        vmodels={v: "" if r.split else r.active_model for v, r in sorted(mirror.vmodels.items())},
    )
