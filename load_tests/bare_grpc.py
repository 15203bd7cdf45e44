"""A bare grpc.aio ModelMesh server: ``registerModel`` answers at once, nothing else.

The ceiling reference for ``scale``: the same client against a server that does no
work shows what grpc.aio itself costs per unary call on this machine (client and
server side), i.e. the most registrations per second any Python router could take.

    python -m load_tests.bare_grpc      # prints "bare grpc listening on PORT", serves until killed
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import grpc

from mesh.proto.mmesh import model_mesh_pb2 as mm
from mesh.proto.mmesh import model_mesh_pb2_grpc as mm_grpc

READY = "bare grpc listening on "


class BareModelMesh(mm_grpc.ModelMeshServicer):
    async def registerModel(self, request: mm.RegisterModelRequest, context: grpc.aio.ServicerContext) -> mm.ModelStatusInfo:  # noqa: N802
        return mm.ModelStatusInfo(status=mm.ModelStatusInfo.NOT_LOADED)


async def serve() -> None:
    server = grpc.aio.server()
    mm_grpc.add_ModelMeshServicer_to_server(BareModelMesh(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"{READY}{port}", flush=True)
    await server.wait_for_termination()


def spawn() -> tuple[subprocess.Popen[str], str]:
    """The server as a child process (its own interpreter, like the router): (process, HOST:PORT)."""
    proc = subprocess.Popen([sys.executable, "-m", "load_tests.bare_grpc"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(READY):
        proc.kill()
        raise RuntimeError(f"bare grpc server did not start (said {line!r})")
    return proc, f"127.0.0.1:{line[len(READY):].strip()}"


if __name__ == "__main__":
    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
