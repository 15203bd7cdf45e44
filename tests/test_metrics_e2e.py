"""End to end: two real runtime processes and a router, traffic that loads and
evicts, and every /metrics endpoint scraped with the expected series present and
counting (README "Metrics")."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as v2

from mesh import modelgen
from mesh.etcd_server import LocalEtcd
from mesh.registry.etcd_store import EtcdStore
from mesh.registry.keys import KeySchema
from mesh.registry.registry import Registry
from router.server import RouterServer
from tests.procs import RuntimeProc, start_runtime
from tests.runtime_helpers import scrape
from tests.test_deploy_render import METRICS as DASHBOARD_METRICS
from tests.test_router import Client, router_settings

MODELS = 6
SPEC = modelgen.spec_for_bytes(2_500_000, seed=11)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("metric-models")
    return [modelgen.write_onnx_mlp(modelgen.spec_for_bytes(2_500_000, seed=11 + i), d / f"m{i}.onnx")
            for i in range(MODELS)]


@pytest.fixture
def runtime_procs(etcd_server: LocalEtcd, mesh_name: str) -> Iterator[list[RuntimeProc]]:
    # Room for about two of the models each: six models on two runtimes must evict.
    procs = [start_runtime(etcd_server.endpoint, mesh_name, capacity="10Mi",
                           extra_args=["--metrics-listen", "127.0.0.1:0"], env={"MESHSERVE_MODEL_TYPES": "onnx"})
             for _ in range(2)]
    yield procs
    for p in procs:
        assert p.terminate() == 0, p.log()[-3000:]


def infer_request(model_id: str) -> v2.ModelInferRequest:
    x = modelgen.sample_input(SPEC, batch=1).astype(np.float32)
    req = v2.ModelInferRequest(model_name=model_id)
    req.inputs.add(name="INPUT0", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    return req


def total(samples: dict[str, float], prefix: str) -> float:
    """Sum of every sample whose name (with labels) starts with ``prefix``."""
    return sum(v for k, v in samples.items() if k.startswith(prefix))


async def test_metrics_endpoints_count_an_end_to_end_run(
        etcd_server: LocalEtcd, mesh_name: str, runtime_procs: list[RuntimeProc], model_files: list[Path]) -> None:
    router = RouterServer(router_settings(etcd_server, mesh_name, metrics_listen="127.0.0.1:0"))
    await router.start()
    client = Client(router.endpoint)
    store = EtcdStore(etcd_server.endpoint)
    await store.start()
    try:
        ids = [f"mm-{i}" for i in range(MODELS)]
        for mid, path in zip(ids, model_files):
            await client.register(mid, path=str(path))
        requests = 0
        for round_ in range(2):
            for mid in ids:
                resp = await client.v2.ModelInfer(infer_request(mid), timeout=60)
                assert resp.outputs[0].name == "OUTPUT0"
                requests += 1
        # Hits too: the last model is loaded now.
        for _ in range(3):
            await client.v2.ModelInfer(infer_request(ids[-1]), timeout=60)
            requests += 1

        r = await asyncio.to_thread(scrape, f"127.0.0.1:{router.metrics_port}")
        assert r['meshserve_requests_total{code="OK",method="ModelInfer",protocol="grpc"}'] == requests
        assert r['meshserve_request_seconds_count{method="ModelInfer",protocol="grpc"}'] == requests
        hits, misses = r["meshserve_cache_hits_total"], r["meshserve_cache_misses_total"]
        assert hits + misses == requests and misses >= MODELS and hits >= 3
        assert r["meshserve_cache_miss_seconds_count"] == misses
        assert r['meshserve_router_loads_total{outcome="OK"}'] >= MODELS
        assert r["meshserve_registered_models"] == MODELS and r["meshserve_instances"] == 2
        assert total(r, "meshserve_models_by_copies{") == MODELS
        assert r['meshserve_models_by_copies{copies="0"}'] >= 1  # evicted ones
        assert r["meshserve_policy_revision"] == 0 and r["meshserve_models_with_failures"] == 0
        assert not any(k.startswith("meshserve_model_requests_total") for k in r)  # per-model labels are off

        registry = Registry(store, KeySchema(mesh_name))
        runtime_samples = []
        for rt in runtime_procs:
            got = await registry.get_instance(rt.instance_id)
            assert got is not None and got.record.metrics_endpoint
            runtime_samples.append(await asyncio.to_thread(scrape, got.record.metrics_endpoint))
        both = {k: sum(s.get(k, 0.0) for s in runtime_samples) for s in runtime_samples for k in s}
        assert both['meshserve_requests_total{code="OK",method="ModelInfer"}'] == requests
        assert both['meshserve_request_seconds_count{method="ModelInfer"}'] == requests
        loads = both['meshserve_model_loads_total{result="success"}']
        assert loads >= MODELS and both["meshserve_model_load_seconds_count"] == loads
        assert both["meshserve_load_queue_seconds_count"] >= loads
        assert both["meshserve_loaded_model_size_bytes_count"] == loads
        evictions = both['meshserve_evictions_total{policy="lru",reason="capacity"}']
        assert evictions >= 1 and both['meshserve_model_unloads_total{reason="evicted"}'] == evictions
        assert both["meshserve_age_at_eviction_seconds_count"] == evictions
        assert both["meshserve_model_unload_seconds_count"] >= evictions
        assert loads - evictions == both["meshserve_models_loaded"]
        for s in runtime_samples:
            assert s["meshserve_capacity_bytes"] == 10 * 2**20
            assert 0 < s["meshserve_used_bytes"] <= s["meshserve_capacity_bytes"]
            assert s["meshserve_lru_age_seconds"] >= 0 and s["meshserve_loads_in_progress"] == 0
        # The puller's hook: every first fetch of a model pulled its file into the disk cache.
        assert both['meshserve_puller_pulls_total{result="success",scheme="file"}'] >= 2
        assert both['meshserve_puller_bytes_total{scheme="file"}'] >= 2 * 2_500_000
        assert both['meshserve_puller_pull_seconds_count{scheme="file"}'] >= 2
        assert "meshserve_puller_cache_hits_total" in both and "meshserve_policy_errors_total" in both
        # Every name the Grafana dashboard uses is exported by the router or the runtimes.
        pages = [f"127.0.0.1:{router.metrics_port}"] + [
            (await registry.get_instance(rt.instance_id)).record.metrics_endpoint for rt in runtime_procs]  # type: ignore[union-attr]
        families = set()
        for endpoint in pages:
            text = await asyncio.to_thread(lambda e=endpoint: urllib.request.urlopen(f"http://{e}/metrics").read().decode())
            families |= {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
        assert DASHBOARD_METRICS <= families, DASHBOARD_METRICS - families
    finally:
        await client.channel.close()
        await router.stop(0)
        await store.close()


def test_per_model_series_only_when_enabled() -> None:
    from prometheus_client import generate_latest

    from mesh.runtime.metrics import RuntimeMetrics
    from router.metrics import RouterMetrics

    for per_model in (False, True):
        m = RouterMetrics(per_model=per_model)
        m.track_copies(lambda: {"a": 2, "b": 0, "c": 5})
        m.observe_request("ModelInfer", "OK", 0.01, "a")
        text = generate_latest(m.registry).decode()
        assert 'meshserve_models_by_copies{copies="2"} 1.0' in text and 'meshserve_models_by_copies{copies="4+"} 1.0' in text
        assert ('meshserve_model_copies{model="c"} 5.0' in text) is per_model
        assert ('meshserve_model_requests_total{code="OK",model="a"} 1.0' in text) is per_model
        r = RuntimeMetrics(per_model=per_model)
        r.observe_request("ModelInfer", "OK", 0.01, "a")
        assert ("model=" in generate_latest(r.registry).decode()) is per_model


async def test_etcd_operation_errors_are_counted_by_operation() -> None:
    from prometheus_client import generate_latest

    from mesh.errors import RegistryUnavailable
    from router.metrics import RouterMetrics

    m = RouterMetrics()
    store = EtcdStore("127.0.0.1:1", timeout_s=0.5, on_error=m.etcd_error)  # nothing listens there
    try:
        for _ in range(2):
            with pytest.raises(RegistryUnavailable):
                await store.get(b"/meshserve/x")
        with pytest.raises(RegistryUnavailable):
            await store.put(b"/meshserve/x", b"1")
    finally:
        await store.close()
    text = generate_latest(m.registry).decode()
    assert 'meshserve_etcd_errors_total{op="get"} 2.0' in text and 'meshserve_etcd_errors_total{op="put"} 1.0' in text
