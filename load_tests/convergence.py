"""Is the mesh converged? Three views of where models are loaded, and a write.

"Converged" (after an etcd outage, a lost lease...) means all of:

- etcd: the LOADED copy keys whose instance record exists, as (model, instance) pairs,
  read from etcd itself;
- runtimes: the pairs each live runtime actually serves (V2 ModelReady for every model
  id asked about), so a copy key without a model, or a model without its key, shows;
  the live runtimes are the caller's (the processes it knows run), else etcd's
  instances, and must be exactly etcd's instances;
- the router: the pairs its mirror holds (MeshAdmin GetClusterStatus), which must equal
  etcd's: its watch resumed (or it re-listed) and it applied every change;
- a registration (a write through the router to etcd) succeeds.

Used by the ``faults`` scenario (b) and by tests (``tests/test_etcd_outage.py``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import grpc
from tritonclient.grpc import service_pb2 as v2
from tritonclient.grpc import service_pb2_grpc as v2_grpc

from mesh.errors import MeshError
from mesh.proto.meshserve.v1 import admin_pb2 as adm
from mesh.proto.meshserve.v1 import admin_pb2_grpc as adm_grpc
from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.proto.mmesh import model_mesh_pb2_grpc as mm_grpc
from mesh.registry import records as rec
from mesh.registry.registry import Registry

Pairs = frozenset[tuple[str, str]]
_probe = itertools.count()


@dataclass(frozen=True)
class Convergence:
    etcd: Pairs = frozenset()
    runtimes: Pairs = frozenset()
    router: Pairs = frozenset()
    #: Instances registered in etcd, in the router's mirror, and running.
    etcd_instances: frozenset[str] = frozenset()
    router_instances: frozenset[str] = frozenset()
    live_instances: frozenset[str] = frozenset()
    #: "OK" or the failed write's status code name.
    write: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return (not self.errors and self.write == "OK" and self.etcd == self.runtimes == self.router
                and self.etcd_instances == self.router_instances == self.live_instances)

    def describe(self) -> str:
        """What differs, for a failure message."""
        if self.converged:
            return f"converged: {len(self.etcd)} copies on {len(self.etcd_instances)} instances"
        parts = [*self.errors]
        if self.write != "OK":
            parts.append(f"write {self.write}")
        for name, pairs in (("runtimes", self.runtimes), ("router", self.router)):
            if pairs != self.etcd:
                parts.append(f"{name} vs etcd: +{sorted(pairs - self.etcd)} -{sorted(self.etcd - pairs)}")
        if not self.etcd_instances == self.router_instances == self.live_instances:
            parts.append(f"instances etcd {sorted(self.etcd_instances)} router {sorted(self.router_instances)} "
                         f"running {sorted(self.live_instances)}")
        return "; ".join(parts)


async def check(registry: Registry, router: grpc.aio.Channel, model_ids: list[str], *,
                probe_path: str, live: dict[str, str] | None = None, timeout_s: float = 5.0) -> Convergence:
    """One look at the three views and one write (a registration of a fresh probe id
    of type onnx at ``probe_path``). ``live``: instance id -> endpoint of the runtimes
    that run (default: etcd's instances)."""
    errors: list[str] = []
    try:
        instances = {r.instance_id: r for r in await registry.list_instances()}
        pairs: set[tuple[str, str]] = set()
        for m in model_ids:
            pairs.update((c.model_id, c.instance_id) for c in await registry.list_copies(m)
                         if c.state == rec.LOADED and c.instance_id in instances)
        in_etcd = frozenset(pairs)
    except MeshError as e:
        return Convergence(errors=[f"etcd: {e}"])
    if live is None:
        live = {i: r.endpoint for i, r in instances.items()}
    serving: set[tuple[str, str]] = set()
    for instance_id, endpoint in live.items():
        async with grpc.aio.insecure_channel(endpoint) as ch:
            stub = v2_grpc.GRPCInferenceServiceStub(ch)
            for m in model_ids:
                try:
                    if (await stub.ModelReady(v2.ModelReadyRequest(name=m), timeout=timeout_s)).ready:
                        serving.add((m, instance_id))
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.NOT_FOUND:
                        errors.append(f"runtime {instance_id}: {e.code().name}")
                        break
    wanted = set(model_ids)
    try:
        status = await adm_grpc.MeshAdminStub(router).GetClusterStatus(adm.GetClusterStatusRequest(),
                                                                         timeout=timeout_s)
        in_router = frozenset((m, i.instance_id) for i in status.instances for m in i.model_ids if m in wanted)
        router_instances = frozenset(i.instance_id for i in status.instances)
    except grpc.aio.AioRpcError as e:
        errors.append(f"router: {e.code().name}")
        in_router, router_instances = frozenset(), frozenset()
    try:
        await mm_grpc.ModelMeshStub(router).registerModel(mm.RegisterModelRequest(
            modelId=f"converge/probe-{next(_probe)}", modelInfo=mm.ModelInfo(type="onnx", path=probe_path)),
            timeout=timeout_s)
        write = "OK"
    except grpc.aio.AioRpcError as e:
        write = e.code().name
    return Convergence(in_etcd, frozenset(serving), in_router, frozenset(instances), router_instances,
                       frozenset(live), write, errors)
