"""A plaintext port serving only ``grpc.health.v1.Health``.

Kubernetes' native gRPC probes cannot speak TLS (nor present client certificates),
so a TLS or mTLS process answers its kubelet here (``--health-listen``); the
servicer is the process's own, so both ports report the same status.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2_grpc

from mesh.errors import FailedPrecondition
from mesh.security.guard import GuardedServer


async def start_health_port(listen: str, servicer: object) -> grpc.aio.Server:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, GuardedServer(server))
    if server.add_insecure_port(listen) == 0:
        raise FailedPrecondition(f"cannot listen on {listen} (--health-listen): the address is in use or not local")
    await server.start()
    return server
