"""Each policy's decisions on hand-built views (no etcd, no servers), the policy
document's validation, and the cache applying a policy with its aging value."""

from __future__ import annotations

import pytest

from mesh.clock import FakeClock
from mesh.errors import InvalidArgument, ResourceExhausted
from mesh.policy import eviction as ev
from mesh.policy.document import (
    PolicyDocument,
    eviction_policy,
    eviction_setting,
    parse_document,
    placement_policy,
    validate_document,
)
from mesh.policy.live import LivePolicy
from mesh.policy.placement import pack, rank, spread
from mesh.policy.view import ClusterView, InstanceView, ModelView
from mesh.registry import records as rec
from mesh.runtime.cache import ModelCache

MiB = 2**20


def E(mid: str, size: int = MiB, last: float = 0.0, **kw: object) -> ev.EntryView:  # noqa: N802
    return ev.EntryView(mid, size, last, **kw)  # type: ignore[arg-type]


# -- eviction -----------------------------------------------------------------


def test_lru_takes_least_recently_used_and_never_a_model_in_flight() -> None:
    view = ev.CacheView((E("a", last=3), E("b", last=1, in_flight=2), E("c", last=2), E("d", last=4)), now=10)
    assert ev.lru(view, 1).victims == ["c"]
    assert ev.lru(view, MiB + 1).victims == ["c", "a"]
    assert ev.lru(view, 4 * MiB) is None  # "b" is busy: only 3 MiB can go
    assert ev.lru(view, 0) == ev.Eviction([], 0.0)


def test_lfu_takes_least_used_and_ages_so_old_popularity_runs_out() -> None:
    lfu = ev.Lfu()
    view = ev.CacheView((E("hot", uses=50, last=1), E("warm", uses=5, last=2), E("cold", uses=1, last=3)), now=10)
    first = lfu(view, 1)
    assert first is not None and first.victims == ["cold"] and first.aging == 1.0
    # Dynamic aging: once the aging value passes the old model's credit + uses, it goes
    # before a newcomer that was used once at the current aging value.
    aged = ev.CacheView((E("old-hot", uses=50, credit=0.0), E("new", uses=1, credit=60.0)), now=10, aging=60.0)
    assert lfu(aged, 1).victims == ["old-hot"]  # type: ignore[union-attr]
    # Half-life decay: 50 uses idle for 10 half-lives weigh less than 2 recent ones.
    decaying = ev.Lfu(half_life_s=1.0)
    idle = ev.CacheView((E("idle-hot", uses=50, last=0.0), E("recent", uses=2, last=10.0)), now=10.0)
    assert decaying(idle, 1).victims == ["idle-hot"]  # type: ignore[union-attr]
    assert lfu(idle, 1).victims == ["recent"]  # type: ignore[union-attr]


def test_gdsf_prefers_evicting_big_cheap_rarely_used_models() -> None:
    gdsf = ev.Gdsf()
    view = ev.CacheView((
        E("big-cheap", size=100 * MiB, uses=2, load_seconds=0.5),     # 2 x 0.5 / 100 = 0.01
        E("small-costly", size=1 * MiB, uses=1, load_seconds=2.0),    # 1 x 2 / 1 = 2
        E("big-costly", size=100 * MiB, uses=10, load_seconds=30.0),  # 10 x 30 / 100 = 3
    ), now=5)
    out = gdsf(view, 1)
    assert out is not None and out.victims == ["big-cheap"] and out.aging == pytest.approx(0.01)
    assert gdsf(view, 101 * MiB).victims == ["big-cheap", "small-costly"]  # type: ignore[union-attr]
    # cost "one": every reload costs the same, so size and frequency alone decide.
    assert ev.Gdsf(cost="one")(view, 1).victims == ["big-cheap"]  # type: ignore[union-attr]
    # An unknown load time counts as 1 s.
    unknown = ev.CacheView((E("x", size=MiB, load_seconds=0.0), E("y", size=MiB, load_seconds=0.5)))
    assert gdsf(unknown, 1).victims == ["y"]  # type: ignore[union-attr]


def test_ttl_expires_idle_models_even_with_room_and_is_lru_when_full() -> None:
    ttl = ev.Ttl(idle_s=60)
    view = ev.CacheView((E("idle", last=0), E("busy-idle", last=0, in_flight=1), E("fresh", last=50)), now=70)
    assert ttl.expired(view) == ["idle"]
    assert ttl(view, 1).victims == ["idle"]  # type: ignore[union-attr]
    assert ttl.sweep_interval_s == 10.0 and ev.Ttl(idle_s=1).sweep_interval_s == 0.25
    assert ev.Ttl(idle_s=60, sweep_s=2).sweep_interval_s == 2


def test_churn_guard_spares_young_models_when_the_mesh_is_full() -> None:
    entries = (E("old", last=5, loaded_at=0), E("young", last=1, loaded_at=95))
    assert ev.lru(ev.CacheView(entries, now=100), 1).victims == ["young"]  # type: ignore[union-attr]
    guarded = ev.CacheView(entries, now=100, min_age_s=30)
    assert ev.lru(guarded, 1).victims == ["old"]  # type: ignore[union-attr]
    assert ev.lru(guarded, 2 * MiB) is None
    for policy in (ev.Lfu(), ev.Gdsf()):
        assert policy(guarded, 1).victims == ["old"]  # type: ignore[union-attr]


def test_cache_applies_the_policy_keeps_aging_and_enforces_the_guard() -> None:
    clock = FakeClock()
    cache = ModelCache(3 * MiB, clock, eviction_policy(validate_document({"eviction": "lfu"}).eviction.default))
    for name in ("a", "b", "c"):
        cache.reserve(name, "onnx", MiB)
        cache.commit(name, object(), 0, load_seconds=1.0)
        clock.advance(1)
    for _ in range(3):
        cache.touch(cache.get("a"))  # type: ignore[arg-type]
    cache.touch(cache.get("b"))  # type: ignore[arg-type]
    victims = cache.reserve("d", "onnx", MiB)
    assert [v.model_id for v in victims] == ["c"] and cache.aging == 1.0
    cache.commit("d", object(), 0)
    # The churn guard (min_age_s) applies only to loads the router marked "mesh full".
    cache.set_policy(eviction_policy(validate_document({"eviction": {"policy": "lru", "min_age_s": 60}}).eviction.default))
    with pytest.raises(ResourceExhausted, match="churn guard"):
        cache.reserve("e", "onnx", MiB, mesh_full=True)
    assert [v.model_id for v in cache.reserve("e", "onnx", MiB)] == ["a"]


def test_a_user_policy_naming_busy_models_cannot_make_room() -> None:
    clock = FakeClock()
    bad = ev.EvictionPolicy("bad", lambda view, needed: ev.Eviction([e.model_id for e in view.entries]))
    cache = ModelCache(MiB, clock, bad)
    cache.reserve("a", "onnx", MiB)
    cache.commit("a", object(), 0)
    cache.get("a").in_flight = 1  # type: ignore[union-attr]
    with pytest.raises(ResourceExhausted):
        cache.reserve("b", "onnx", MiB)


def pick_biggest(view: ev.CacheView, needed: int, *, skip: str = "") -> list[str]:
    """A user eviction policy for the tests (loaded by import path)."""
    return [e.model_id for e in sorted(ev.candidates(view), key=lambda e: -e.size) if e.model_id != skip][:1]


def test_user_eviction_policy_by_import_path_with_params() -> None:
    doc = validate_document({"eviction": {"policy": "tests.test_policies:pick_biggest", "params": {"skip": "b"}}})
    policy = eviction_policy(doc.eviction.default)
    view = ev.CacheView((E("a", size=MiB), E("b", size=9 * MiB), E("c", size=2 * MiB)))
    assert policy.victims(view, 1).victims == ["c"]  # type: ignore[union-attr]


# -- placement ----------------------------------------------------------------


def I(iid: str, used: int, cap: int = 10, **kw: object) -> InstanceView:  # noqa: N802
    return InstanceView(iid, cap, used, **kw)  # type: ignore[arg-type]


def test_rank_spread_and_pack_on_one_view() -> None:
    view = ClusterView((I("a", 7, model_count=7), I("b", 2, model_count=2), I("c", 5, model_count=5),
                        I("full", 10, model_count=10, oldest_lru_ms=5)), now_ms=100)
    m = ModelView("m", "onnx", 2)
    assert rank(view, m) == ["b", "c", "a", "full"]
    assert spread(view, m) == ["b", "c", "a", "full"]
    assert pack(view, m) == ["a", "c", "b", "full"]  # fullest that still fits first
    assert pack(view, m, headroom=0.2) == ["c", "b", "a", "full"]  # a would keep under 2 free
    big = ModelView("big", "onnx", 6)
    assert pack(view, big)[0] == "b"


def test_spread_puts_the_next_copy_in_another_zone() -> None:
    view = ClusterView((I("a1", 0, zone="a"), I("a2", 0, zone="a"), I("b1", 5, zone="b")), now_ms=1)
    m = ModelView("m", "onnx", 1, copies=frozenset({"a1"}))
    assert spread(view, m) == ["b1", "a2"]
    assert spread(view, m, zones=False) == ["a2", "b1"]


def test_constraints_type_labels_failures_and_draining() -> None:
    gpu = {"device": "gpu"}
    view = ClusterView((I("cpu", 0, model_types=("onnx",)), I("gpu", 5, labels=gpu, model_types=("onnx", "pytorch")),
                        I("gone", 0, shutting_down=True), I("failed", 0)), now_ms=1)
    pt = ModelView("m", "pytorch", 1)
    assert rank(view, pt) == ["failed", "gpu"]  # only the pytorch-capable ones; more free bytes first
    onnx = ModelView("m", "onnx", 1, failed_on=frozenset({"failed"}))
    assert rank(view, onnx) == ["cpu", "gpu", "failed"]
    doc = validate_document({"placement": {"policy": "pack", "require_by_type": {"onnx": gpu}}})
    assert placement_policy(doc.placement)(view, onnx) == ["gpu"]
    needs_cpu = ModelView("m", "onnx", 1, required_labels={"device": "cpu"})
    assert placement_policy(doc.placement)(view, needs_cpu) == []  # the model's own label wins


def reverse_ids(view: ClusterView, model: ModelView, *, limit: int = 10) -> list[str]:
    """A user placement policy for the tests."""
    return sorted((i.instance_id for i in view.instances), reverse=True)[:limit]


def test_user_placement_policy_by_import_path() -> None:
    doc = validate_document({"placement": {"policy": "tests.test_policies:reverse_ids", "params": {"limit": 2}}})
    view = ClusterView((I("a", 0), I("b", 0), I("c", 0)), now_ms=1)
    assert placement_policy(doc.placement)(view, ModelView("m", "onnx", 1)) == ["c", "b"]


# -- the document ---------------------------------------------------------------


@pytest.mark.parametrize("doc,where", [
    ({"eviction": {"default": {"policy": "ttl", "idle_s": 0}}}, "eviction.default.idle_s: Input should be greater than 0"),
    ({"eviction": {"default": {"policy": "mru"}}}, "eviction.default: policy must be lru, lfu, gdsf, ttl"),
    ({"eviction": {"by_label": {"device": "lru"}}}, "eviction.by_label: Value error, label selector 'device'"),
    ({"eviction": {"default": {"policy": "lfu", "half_life": 3}}}, "eviction.default.half_life: Extra inputs"),
    ({"placement": {"policy": "pack", "headroom": 1.5}}, "placement.headroom: Input should be less than 1"),
    ({"placement": "scatter"}, "placement: policy must be rank, spread, pack"),
    ({"placement": {"policy": "no.such.module:fn"}}, "placement.policy: cannot import 'no.such.module'"),
    ({"router": {"max_load_failures": 0}}, "router.max_load_failures: Input should be greater than or equal to 1"),
    ({"evictoin": {}}, "evictoin: Extra inputs are not permitted"),
    ([], "policy document must be an object"),
])
def test_invalid_documents_are_refused_naming_the_field(doc: object, where: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_document(doc)
    assert where.replace("Value error, ", "") in str(err.value)


def test_yaml_and_json_documents_and_shorthands() -> None:
    yaml_doc = parse_document("eviction:\n  default: gdsf\n  by_label:\n    device=gpu,zone=a: {policy: ttl, idle_s: 5}\n"
                              "placement: spread\nrouter: {scale_up_rpm: 10}\n")
    assert yaml_doc == parse_document(yaml_doc.model_dump_json())
    assert yaml_doc.eviction_for({"device": "gpu", "zone": "a"}).policy == "ttl"
    assert yaml_doc.eviction_for({"device": "gpu"}).policy == "gdsf"
    assert PolicyDocument().eviction_for({}, eviction_setting("lfu")).policy == "lfu"  # the runtime's setting
    assert parse_document('{"eviction": "lfu"}').eviction.default.policy == "lfu"  # type: ignore[union-attr]
    assert parse_document("") == PolicyDocument()
    with pytest.raises(InvalidArgument, match="neither JSON nor YAML"):
        parse_document("{nope")


def test_live_policy_keeps_the_old_document_when_a_stored_one_is_bad() -> None:
    errors: list[int] = []
    live = LivePolicy(on_error=lambda: errors.append(1))
    seen: list[str] = []
    live.subscribe(lambda doc: seen.append(doc.placement.policy))
    assert live.apply(rec.PolicyRecord({"placement": "pack"}), 7) and live.revision == 7
    assert not live.apply(rec.PolicyRecord({"placement": {"policy": "pack", "headroom": 3}}), 8)
    assert live.document.placement.policy == "pack" and live.revision == 7 and errors == [1]
    assert live.apply(None, 0) and live.document == PolicyDocument() and live.source == "defaults"
    assert seen == ["rank", "pack", "rank"]


def test_zipf_simulation_belady_bounds_every_policy() -> None:
    import argparse

    from load_tests import policy_sim

    args = argparse.Namespace(models=100, requests=3000, capacity=0.1, zipf=1.0, seed=3)
    trace = policy_sim.make_trace(args, sized=False)
    best = policy_sim.belady(trace).misses
    results = {name: policy_sim.simulate(trace, p, rate=100).misses
               for name, p in policy_sim.policies([60.0]).items()}
    distinct = len(set(trace.requests.tolist()))
    assert distinct <= best < min(results.values()), results
    assert results["lfu"] < results["lru"]  # Zipf popularity is stable: frequency wins
    # What learning costs: exact counts from the first request, still above the static optimum.
    static, _ = policy_sim.tr.static_optimum(trace)
    assert static <= policy_sim.exact_lfu(trace).misses < results["lru"]
