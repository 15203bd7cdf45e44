"""Registry behaviour that needs etcd itself: restarts and unreachable endpoints."""

from __future__ import annotations

import asyncio
import time

import pytest

from mesh.errors import RegistryUnavailable
from mesh.etcd_server import LocalEtcd, free_port
from mesh.registry.etcd_store import EtcdStore
from mesh.registry.keys import KeySchema
from mesh.registry.store import WatchEvent


async def test_watch_across_etcd_restart_delivers_every_event_once(tmp_path, keys: KeySchema) -> None:
    server = LocalEtcd(tmp_path / "etcd")
    server.start()
    try:
        watcher = EtcdStore(server.endpoint, timeout_s=2.0)
        # Generous connect bound: a loaded CI machine may take seconds to restart etcd.
        writer = EtcdStore(server.endpoint, timeout_s=2.0, connect_timeout_s=30.0)
        await watcher.start()
        await writer.start()
        start = await writer.revision() + 1
        got: list[WatchEvent] = []

        async def follow() -> None:
            async for ev in watcher.watch(keys.models, start_revision=start):
                got.append(ev)
                if len(got) == 20:
                    return

        task = asyncio.create_task(follow())
        for i in range(10):
            await writer.put(keys.model(f"before{i}"), b"v")
        await asyncio.sleep(0.3)
        await asyncio.get_running_loop().run_in_executor(None, server.restart)
        # Written while the watcher is still reconnecting: must arrive too.
        await writer.start()
        for i in range(10):
            await writer.put(keys.model(f"after{i}"), b"v")
        await asyncio.wait_for(task, 30)
        names = [ev.key.decode().rsplit("/", 1)[-1] for ev in got]
        assert names == [f"before{i}" for i in range(10)] + [f"after{i}" for i in range(10)]
        assert len({ev.revision for ev in got}) == 20
        await watcher.close()
        await writer.close()
    finally:
        server.cleanup()


async def test_unreachable_etcd_names_the_endpoint_after_a_bounded_wait() -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    store = EtcdStore(endpoint, timeout_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(RegistryUnavailable) as err:
        await store.start()
    assert time.monotonic() - t0 < 5
    assert endpoint in str(err.value) and "unreachable" in str(err.value)
    await store.close()


async def test_calls_fail_with_unavailable_while_etcd_is_down(tmp_path, keys: KeySchema) -> None:
    server = LocalEtcd(tmp_path / "etcd")
    server.start()
    store = EtcdStore(server.endpoint, timeout_s=1.0)
    await store.start()
    server.stop(kill=True)
    try:
        with pytest.raises(RegistryUnavailable) as err:
            await store.put(keys.model("x"), b"v")
        assert server.endpoint in str(err.value)
    finally:
        await store.close()
        server.cleanup()
