"""Placement: which runtime should load a model that has no (or too few) copies.

``rank`` is the default policy (DESIGN.md, "Cache and placement"): a pure function
over a frozen view returning eligible instance ids, best first.
"""

from __future__ import annotations

from collections.abc import Callable

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
