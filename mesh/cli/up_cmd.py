"""`meshserve up`: a local mesh in the foreground.

Today it starts (or joins) etcd and prints the cluster as the registry sees it;
the runtime and router issues add the processes behind it.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from mesh.cli.common import add_registry_arguments, build_settings, run_until_signal, setup_logging
from mesh.etcd_server import LocalEtcd
from mesh.registry.etcd_store import EtcdStore
from mesh.registry.keys import KeySchema
from mesh.registry.mirror import RegistryMirror
from mesh.settings import CommonSettings

HELP = "start a local mesh in the foreground (local etcd unless --etcd is given)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_registry_arguments(p)
    p.add_argument("--data-dir", help="where local etcd and caches keep their files (default: a temp dir)")
    p.add_argument("--once", action="store_true", help="print the cluster status and exit instead of waiting")


def describe(mirror: RegistryMirror, endpoint: str, mesh: str) -> str:
    lines = [f"meshserve mesh '{mesh}' on etcd {endpoint}",
             f"  registered models: {len(mirror.models)}  vmodels: {len(mirror.vmodels)}",
             f"  runtime instances: {len(mirror.instances)}  loaded copies: {sum(len(c) for c in mirror.copies.values())}"]
    for inst in mirror.instances.values():
        lines.append(f"    {inst.instance_id} {inst.endpoint} used {inst.used_bytes}/{inst.capacity_bytes} B, "
                     f"{inst.model_count} models")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    given_etcd = args.etcd
    args.etcd = args.etcd or "127.0.0.1:2379"
    settings = build_settings(CommonSettings, argparse.Namespace(etcd=args.etcd, mesh=args.mesh))
    setup_logging(settings.log_level)

    async def main(stop: asyncio.Event) -> int:
        local: LocalEtcd | None = None
        endpoint = settings.etcd
        if not given_etcd:
            data = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="meshserve-up-"))
            local = LocalEtcd(data / "etcd")
            await asyncio.get_running_loop().run_in_executor(None, local.start)
            endpoint = local.endpoint
        store = EtcdStore(endpoint, timeout_s=settings.etcd_timeout_s)
        try:
            await store.start()
            mirror = RegistryMirror(store, KeySchema(settings.mesh))
            await mirror.start()
            print(describe(mirror, endpoint, settings.mesh), flush=True)
            if not args.once:
                print("ready; Ctrl-C stops", flush=True)
                await stop.wait()
            await mirror.stop()
        finally:
            await store.close()
            if local:
                local.cleanup()
        return 0

    return run_until_signal(main)
