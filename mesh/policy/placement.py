"""Placement: which runtime should load a model that has no (or too few) copies.

Each policy is a pure function over a frozen view returning eligible instance
ids, best first (the router tries them in order): ``rank`` (the default,
DESIGN.md "Cache and placement"), ``spread`` and ``pack``. All honour the hard
constraints of :func:`eligible` (not shutting down, model type, required labels,
big enough); :func:`with_type_constraints` adds per-type label requirements
from the policy document. The router also marks a load placed where it must
evict (no eligible instance had room) as "mesh full", which arms the runtime's
churn guard.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from mesh.model_types import canonical_model_type
from mesh.policy.view import ClusterView, InstanceView, ModelView

PlacementPolicy = Callable[[ClusterView, ModelView], list[str]]

#: Label key a model may require of a runtime's labels, from model labels
#: ``require.<key>=<value>`` (e.g. ``require.device=gpu``).
REQUIRE_PREFIX = "require."


def eligible(inst: InstanceView, model: ModelView) -> bool:
    """Hard constraints: up, not holding it already, can load the type, labels match."""
    if inst.shutting_down or inst.instance_id in model.copies:
        return False
    if inst.model_types and model.type not in inst.model_types:
        return False
    if inst.capacity_bytes and model.size_bytes > inst.capacity_bytes:
        return False
    return all(inst.labels.get(k) == v for k, v in model.required_labels.items())


def rank(view: ClusterView, model: ModelView) -> list[str]:
    """Default ranking.

    1. instances where it failed recently go last;
    2. instances with room for it before those that would have to evict;
    3. among full ones, the one whose least recently used model is oldest
       (a cluster-wide LRU without a coordinator);
    4. fewer models, more free bytes, fewer loads in progress;
    5. the instance id, so ties break the same way in every router.
    """
    candidates = [i for i in view.instances if eligible(i, model)]

    def key(i: InstanceView) -> tuple[int, int, int, int, int, int, str]:
        fits = i.free_bytes >= model.size_bytes
        lru_age = 0 if fits else (i.oldest_lru_ms or view.now_ms)
        return (
            i.instance_id in model.failed_on,
            not fits,
            lru_age,
            i.model_count,
            -i.free_bytes,
            i.loads_in_progress,
            i.instance_id,
        )

    return [i.instance_id for i in sorted(candidates, key=key)]


def near_equals(view: ClusterView, model: ModelView, ranked: list[str], k: int = 3) -> list[str]:
    """The head of a ranking whose members are as good as the best for practical purposes.

    Same fit class (room vs must-evict) and at most one model more than the best.
    Picking among them at random (as ModelMesh does) keeps concurrent routers with
    slightly stale views from all piling onto the same instance in a burst.
    """
    if not ranked:
        return []
    by_id = {i.instance_id: i for i in view.instances}
    best = by_id[ranked[0]]
    best_fits = best.free_bytes >= model.size_bytes
    out = [ranked[0]]
    for inst_id in ranked[1:k]:
        i = by_id[inst_id]
        if (i.free_bytes >= model.size_bytes) == best_fits and i.model_count <= best.model_count + 1 \
                and (inst_id in model.failed_on) == (ranked[0] in model.failed_on):
            out.append(inst_id)
    return out

def _fits(i: InstanceView, model: ModelView, headroom: float = 0.0) -> bool:
    return i.free_bytes - int(i.capacity_bytes * headroom) >= model.size_bytes


def spread(view: ClusterView, model: ModelView, *, zones: bool = True) -> list[str]:
    """Spread: copies in zones that hold none of this model yet first (``zones``),
    then instances with room, then the fewest models and the most free bytes;
    full instances by oldest LRU entry, as ``rank``."""
    candidates = [i for i in view.instances if eligible(i, model)]
    zone_of = {i.instance_id: i.zone for i in view.instances}
    copies_in_zone: dict[str, int] = {}
    for held in model.copies:
        z = zone_of.get(held, "")
        copies_in_zone[z] = copies_in_zone.get(z, 0) + 1

    def key(i: InstanceView) -> tuple[bool, int, bool, int, int, int, int, str]:
        fits = _fits(i, model)
        return (
            i.instance_id in model.failed_on,
            copies_in_zone.get(i.zone, 0) if zones else 0,
            not fits,
            0 if fits else (i.oldest_lru_ms or view.now_ms),
            i.model_count,
            -i.free_bytes,
            i.loads_in_progress,
            i.instance_id,
        )

    return [i.instance_id for i in sorted(candidates, key=key)]


def pack(view: ClusterView, model: ModelView, *, headroom: float = 0.0) -> list[str]:
    """Bin-packing (best fit): the fullest instance that still fits the model
    (keeping ``headroom`` x capacity free) first, so whole instances stay empty
    for big models; if none fits, as ``rank`` (oldest LRU entry first)."""
    candidates = [i for i in view.instances if eligible(i, model)]

    def key(i: InstanceView) -> tuple[bool, int, int, int, str]:
        # 0: fits keeping the headroom; 1: fits only by using the headroom; 2: must evict.
        tier = 0 if _fits(i, model, headroom) else 1 if _fits(i, model) else 2
        return (
            i.instance_id in model.failed_on,
            tier,
            i.free_bytes if tier < 2 else (i.oldest_lru_ms or view.now_ms),
            i.loads_in_progress,
            i.instance_id,
        )

    return [i.instance_id for i in sorted(candidates, key=key)]


def with_type_constraints(policy: PlacementPolicy, by_type: dict[str, dict[str, str]]) -> PlacementPolicy:
    """Wraps ``policy`` so a model of type T also requires the runtime labels
    ``by_type[T]`` (e.g. ``{"pytorch": {"device": "gpu"}}``); the model's own
    ``require.*`` labels win on a conflict."""
    if not by_type:
        return policy
    by_type = {canonical_model_type(t): labels for t, labels in by_type.items()}

    def constrained(view: ClusterView, model: ModelView) -> list[str]:
        extra = by_type.get(model.type)
        if extra:
            model = dataclasses.replace(model, required_labels={**extra, **model.required_labels})
        return policy(view, model)

    return constrained
