"""The ``adaptive`` eviction policy on hand-built views: admission, aging, the
climber, size and cost, and the runtime's cache feeding its state."""

from __future__ import annotations

import pytest

from mesh.clock import FakeClock
from mesh.errors import InvalidArgument
from mesh.policy import eviction as ev
from mesh.policy.adaptive import STEP, Adaptive, AdaptiveState, counter_cap
from mesh.policy.document import eviction_policy, eviction_setting, validate_document
from mesh.policy.sketch import FrequencySketch
from mesh.runtime.cache import ModelCache

MiB = 2**20


def E(mid: str, size: int = MiB, last: float = 0.0, loaded: float = 0.0, **kw: object) -> ev.EntryView:  # noqa: N802
    return ev.EntryView(mid, size, last, loaded_at=loaded, **kw)  # type: ignore[arg-type]


def state_with(counts: dict[str, int], **kw: object) -> AdaptiveState:
    state = AdaptiveState(climb=False, **kw)  # type: ignore[arg-type]
    for mid, n in counts.items():
        for _ in range(n):
            state.record(mid, resident=100)
    return state


def view(entries: tuple[ev.EntryView, ...], state: AdaptiveState, capacity: int, incoming: int = MiB) -> ev.CacheView:
    return ev.CacheView(entries, now=100.0, capacity=capacity, incoming_size=incoming, state=state)


def test_a_newcomer_that_loses_admission_is_the_first_victim() -> None:
    # "new" is the window (the newest load); the next newcomer pushes it out, and it
    # must beat main's weakest model ("warm", 3 requests) on frequency to stay.
    entries = (E("hot", last=5, loaded=1), E("warm", last=4, loaded=2), E("new", last=9, loaded=9))
    once = state_with({"hot": 9, "warm": 3, "new": 1})
    assert Adaptive()(view(entries, once, 3 * MiB), 1).victims == ["new"]  # type: ignore[union-attr]
    # Requests while it sat in the window win it admission: the weakest in main goes.
    popular = state_with({"hot": 9, "warm": 3, "new": 6})
    assert Adaptive()(view(entries, popular, 3 * MiB), 1).victims == ["warm"]  # type: ignore[union-attr]
    # Ties keep the incumbent.
    tie = state_with({"hot": 9, "warm": 3, "new": 3})
    assert Adaptive()(view(entries, tie, 3 * MiB), 1).victims == ["new"]  # type: ignore[union-attr]


def test_admission_never_refuses_and_never_takes_a_busy_model() -> None:
    entries = (E("a", loaded=1, in_flight=1), E("b", loaded=2), E("c", loaded=3))
    state = state_with({"a": 1, "b": 8, "c": 8})
    out = Adaptive()(view(entries, state, 3 * MiB), 2 * MiB)
    assert out is not None and sorted(out.victims) == ["b", "c"]  # "a" is busy, whatever its frequency
    assert Adaptive()(view(entries, state, 3 * MiB), 3 * MiB) is None  # only 2 MiB can go
    assert Adaptive()(view(entries, state, 3 * MiB), 0) == ev.Eviction([], 0.0)
    # Without state (a user calling it on a bare view) it falls back to uses since loaded.
    bare = ev.CacheView((E("x", uses=5, loaded=1), E("y", uses=1, loaded=2), E("z", uses=9, loaded=3)), capacity=3 * MiB)
    assert Adaptive()(bare, 1).victims == ["y"]  # type: ignore[union-attr]


def test_a_long_memory_counts_high_enough_to_rank_rare_models() -> None:
    # Counters saturate at 31 up to a memory of 64 requests per loaded model, and
    # proportionally later beyond (at most a byte): at the default longest memory (128,
    # cap 62) two models with 60 and 100 requests in one period stay apart; at a short one both
    # saturate (there the cap is what lets a fallen hot model age out quickly).
    assert (counter_cap(4), counter_cap(64), counter_cap(128), counter_cap(256), counter_cap(4096)) == (31, 31, 62, 124, 255)
    long = state_with({"rare": 60, "rarer": 100})
    assert long.frequency("rarer") > long.frequency("rare") > 32
    short = state_with({"rare": 60, "rarer": 100}, sample_factor=16)
    assert short.frequency("rare") == short.frequency("rarer") == 31 + 1


def test_size_and_cost_decide_what_a_byte_is_worth() -> None:
    # The same frequency: a 2 GiB model that reloads in 8 s is worth 8/2048 s per MiB,
    # a 50 MiB one that reloads in 2 s is worth 2/50: the big one goes first, and one
    # eviction frees room for a newcomer of 1 GiB.
    entries = (E("big", size=2048 * MiB, loaded=1, load_seconds=8.0),
               E("small", size=50 * MiB, loaded=2, load_seconds=2.0),
               E("newest", size=10 * MiB, loaded=3, load_seconds=1.0))
    state = state_with({"big": 5, "small": 5, "newest": 9})
    assert Adaptive()(view(entries, state, 2108 * MiB, 1024 * MiB), 1024 * MiB).victims == ["big"]  # type: ignore[union-attr]
    # Equal sizes: the costlier reload stays (cost "one" ignores the load time).
    same = (E("cheap", loaded=1, load_seconds=0.5, last=2), E("costly", loaded=2, load_seconds=9.0, last=1),
            E("newest", loaded=3))
    st = state_with({"cheap": 4, "costly": 4, "newest": 9})
    assert Adaptive()(view(same, st, 3 * MiB), 1).victims == ["cheap"]  # type: ignore[union-attr]
    assert Adaptive(cost="one")(view(same, st, 3 * MiB), 1).victims == ["costly"]  # type: ignore[union-attr]


def test_the_sketch_ages_so_old_popularity_runs_out() -> None:
    sketch = FrequencySketch(width=1024, period=100)
    for _ in range(40):
        sketch.record("old")
    assert sketch.estimate("old") == 15 + 1  # saturated counters plus the doorkeeper bit
    assert sketch.estimate("never") == 0
    for i in range(60):  # the rest of the period: the reset halves everything
        sketch.record(f"x{i}")
    assert sketch.resets == 1 and sketch.estimate("old") == 7
    for i in range(300):
        sketch.record(f"y{i % 150}")
    assert sketch.estimate("old") == 0 and sketch.resets == 4
    # One-off keys stop at the doorkeeper: a scan leaves the counters alone.
    fresh = FrequencySketch(width=16384, period=10_000)
    for i in range(500):
        fresh.record(f"scan{i}")
    above = [i for i in range(500) if fresh.estimate(f"scan{i}") > 1]
    assert len(above) <= 5  # the doorkeeper is a Bloom filter: rare false positives
    # Its bits are packed 8 to a byte, so a long memory's thousands of one-off keys stay
    # out too (at one bit per byte 104 of these 3,000 got through).
    for i in range(500, 3000):
        fresh.record(f"scan{i}")
    assert sum(fresh.estimate(f"scan{i}") > 1 for i in range(3000)) <= 30
    assert list(fresh.estimates([f"scan{i}" for i in range(3000)])) == [fresh.estimate(f"scan{i}") for i in range(3000)]
    with pytest.raises(ValueError, match="power of two"):
        FrequencySketch(width=1000)


def _sample(state: AdaptiveState, hit_ratio: float, resident: int = 16) -> None:
    n = 10 * resident  # one climber sample
    misses = round(n * (1 - hit_ratio))
    for i in range(n):
        if i < misses:
            state.missed(f"m{i}")
        state.record(f"m{i % 40}", resident)


def test_the_climber_grows_the_window_when_recency_pays_and_turns_back_when_not() -> None:
    state = AdaptiveState(window=0.01, max_window=0.5)
    assert state.window == pytest.approx(0.01)
    _sample(state, 0.5)  # warm-up: up, keeps shrinking (clamped at the small end)
    assert state.recency == 0.0
    _sample(state, 0.3)  # the hit ratio fell: turn toward a bigger window
    assert state.recency == pytest.approx(STEP) and state.window > 0.01
    _sample(state, 0.4)  # it paid: keep going
    _sample(state, 0.45)
    assert state.recency > 2 * STEP
    grown = state.window
    _sample(state, 0.2)  # it stopped paying: back toward the small window
    assert state.window < grown
    still = AdaptiveState(climb=False)
    for ratio in (0.5, 0.3, 0.4):
        _sample(still, ratio)
    assert still.recency == 0.0 and still.window == pytest.approx(0.01)


def _replay(state: AdaptiveState, keys: list[str], capacity: int = 8 * MiB) -> None:
    for i, k in enumerate(keys):
        state.record(k, 8, MiB, capacity, 1.0, float(i))


def test_the_shadows_pick_a_short_memory_when_the_hot_set_moves_and_the_long_one_when_it_stays() -> None:
    # Every model sampled (shadow_rate 1): the shadows replay the whole trace with 8 slots.
    moving = AdaptiveState(shadow_rate=1.0)
    assert moving.memory == 128 and moving.memories == (128, 32, 8, 2)
    hot_sets = [[f"p{phase}-{j}" for j in range(6)] for phase in range(40)]
    _replay(moving, [hot[i % 6] for hot in hot_sets for i in range(120)])
    assert moving.memory < 128  # stale counts of past hot sets would hold the slots
    stable = AdaptiveState(shadow_rate=1.0)
    _replay(stable, [f"s{(i * 7) % 6}" if i % 3 else f"cold{i}" for i in range(4800)])
    assert stable.memory == 128
    assert AdaptiveState(climb=False).miniatures == []


def test_document_and_setting_build_adaptive_with_validated_parameters() -> None:
    spec = validate_document({"eviction": {"policy": "adaptive", "window": 0.05, "sample_factor": 16,
                                           "sketch_width": 4096, "cost": "one", "min_age_s": 5}}).eviction.default
    policy = eviction_policy(spec)
    assert policy.name == "adaptive" and policy.min_age_s == 5 and policy.new_state is not None
    state = policy.new_state()
    assert isinstance(state, AdaptiveState) and state.window == pytest.approx(0.05) and state.sketch.width == 4096
    assert eviction_policy(eviction_setting("adaptive")).name == "adaptive"
    for bad, field in (({"sketch_width": 1000}, "power of two"), ({"window": 0.9}, "window"),
                       ({"sample_factor": 0}, "sample_factor"), ({"bogus": 1}, "bogus")):
        with pytest.raises(InvalidArgument, match=field):
            validate_document({"eviction": {"policy": "adaptive", **bad}})
    with pytest.raises(ValueError, match="sketch_width"):
        eviction_setting('{"policy": "adaptive", "sketch_width": 3}')


def test_the_runtime_cache_feeds_the_state_and_keeps_it_across_equal_policies() -> None:
    clock = FakeClock()
    policy = eviction_policy(eviction_setting("adaptive"))
    cache = ModelCache(3 * MiB, clock, policy)
    for name in ("a", "b", "c"):
        cache.reserve(name, "onnx", MiB)
        cache.commit(name, object(), 0, load_seconds=1.0)
        clock.advance(1)
    for _ in range(5):
        cache.touch(cache.get("a"))  # type: ignore[arg-type]
        cache.touch(cache.get("b"))  # type: ignore[arg-type]
    cache.touch(cache.get("c"))  # type: ignore[arg-type]
    state = cache.policy_state
    assert isinstance(state, AdaptiveState) and state.frequency("a") > state.frequency("c") >= 1
    # "c" is the window (newest load) and the least requested: the newcomer replaces it.
    assert [v.model_id for v in cache.reserve("d", "onnx", MiB)] == ["c"]
    cache.set_policy(eviction_policy(eviction_setting("adaptive")))
    assert cache.policy_state is state  # the same policy again (a document re-applied): the sketch survives
    cache.set_policy(eviction_policy(eviction_setting('{"policy": "adaptive", "window": 0.1}')))
    assert cache.policy_state is not state
    cache.set_policy(ev.LRU)
    assert cache.policy_state is None
