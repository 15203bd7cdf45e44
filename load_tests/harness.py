"""What every scenario shares: the mesh to test (given, or a local one) and results.json."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import logging
import shlex
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from mesh.cli.local_mesh import LocalMesh
from mesh.etcd_server import free_port

log = logging.getLogger(__name__)
GRPC_OPTIONS = [("grpc.max_send_message_length", 256 * 2**20), ("grpc.max_receive_message_length", 256 * 2**20)]


@dataclass
class Mesh:
    """A mesh under test: its router endpoint and, when local, the processes behind it."""

    target: str
    router_metrics: str = ""
    local: LocalMesh | None = None
    #: Prefix for the model ids a run registers: empty on a fresh local mesh, unique per run on
    #: a given ``--target`` so a rerun neither collides with nor reuses an earlier run's models.
    tag: str = ""
    work_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="loadtest-")))
    #: The router's REST HOST:PORT ("" unless the scenario asked for REST).
    rest_target: str = ""

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.target, options=GRPC_OPTIONS)


def add_mesh_arguments(p: argparse.ArgumentParser, *, runtimes: int = 2, capacity: str = "") -> None:
    p.add_argument("--target", help="router HOST:PORT of a running mesh (default: start a local one)")
    p.add_argument("--router-metrics", default="", help="router /metrics HOST:PORT when --target is given")
    p.add_argument("--rest-target", default="", help="router REST HOST:PORT when --target is given (REST scenarios)")
    p.add_argument("--runtimes", type=int, default=runtimes, help="local mesh: runtime processes")
    p.add_argument("--capacity", default=capacity, help="local mesh: model memory per runtime, e.g. 64Mi")
    p.add_argument("--out", default="", help="results folder (default load_tests/results/<scenario>)")
    p.add_argument("--seed", type=int, default=1)


@asynccontextmanager
async def open_mesh(args: argparse.Namespace, *, runtimes: int | None = None, capacity: str | None = None,
                    runtime_env: dict[str, str] | None = None, rest: bool = False, gateway: bool = False,
                    gateway_concurrency: int = 0) -> AsyncIterator[Mesh]:
    """The given ``--target``, or a local mesh (etcd + runtimes + a router *process*, so the
    router never shares this client's interpreter; with ``gateway``, Envoy in front of it),
    stopped on exit."""
    if args.target:
        mesh = Mesh(args.target, args.router_metrics, tag=f"lt{uuid.uuid4().hex[:8]}-",
                    rest_target=getattr(args, "rest_target", ""))
        try:
            yield mesh
        finally:
            shutil.rmtree(mesh.work_dir, ignore_errors=True)  # model files only: the target keeps its own
        return
    work = Path(tempfile.mkdtemp(prefix="loadtest-"))
    metrics = f"127.0.0.1:{free_port()}"
    local = LocalMesh(runtimes=args.runtimes if runtimes is None else runtimes,
                      listen=f"127.0.0.1:{free_port()}", capacity=(args.capacity if capacity is None else capacity)
                      or None, data_dir=work / "mesh", metrics_listen=metrics, runtime_env=runtime_env or {},
                      router_process=True, rest_listen=f"127.0.0.1:{free_port()}" if rest else "",
                      gateway=gateway, gateway_concurrency=gateway_concurrency)
    ok = False
    try:
        await local.start()
        yield Mesh(local.endpoint, metrics, local, work_dir=work, rest_target=local.rest_endpoint)
        ok = True
    finally:
        await local.stop()
        # etcd data and model files run to hundreds of MB (scale); a failed run keeps them and its logs.
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log.warning("run failed: mesh logs and data kept in %s", work)


def out_dir(args: argparse.Namespace, scenario: str) -> Path:
    out = Path(args.out or f"load_tests/results/{scenario}")
    out.mkdir(parents=True, exist_ok=True)
    return out


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "processor": platform.processor() or platform.machine()}


def save_json(out: Path, doc: dict[str, Any]) -> Path:
    """Writes ``doc`` as ``out/results.json`` (creating ``out``); every benchmark's one output file."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return path


def write_results(out: Path, scenario: str, args: argparse.Namespace, body: dict[str, Any],
                  plots: list[Path]) -> Path:
    doc = {
        "scenario": scenario,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m load_tests " + " ".join(shlex.quote(a) for a in args.argv),
        "args": {k: v for k, v in vars(args).items() if k not in ("func", "argv")},
        "machine": machine(),
        **body,
        "plots": [p.name for p in plots],
    }
    return save_json(out, doc)
