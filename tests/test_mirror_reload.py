"""A router's mirror that cannot resume its watch (the revisions it missed were compacted)
re-lists the registry, and its listeners hear of every key that changed in the gap, as
if the events had arrived: the routing table, the xDS snapshot and the policy follow.

Real etcd, reached by the mirror through a TCP proxy the test can cut (a partition of
that one client), while another client writes and compacts.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aetcd

from mesh.etcd_server import LocalEtcd
from mesh.registry import records as rec
from mesh.registry.etcd_store import EtcdStore
from mesh.registry.keys import KeySchema, ParsedKey
from mesh.registry.mirror import RegistryMirror
from mesh.registry.registry import Registry


class CuttableProxy:
    """TCP on 127.0.0.1:<port> to ``target``; ``cut()`` drops every connection and refuses
    new ones until ``restore()``."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.close()
        self._writers.clear()
        await self._server.wait_closed()


async def _until(what: str, cond: Any, timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        assert loop.time() < deadline, f"{what}: not within {timeout_s}s"
        await asyncio.sleep(0.05)


def _model(model_id: str, path: str) -> rec.ModelRecord:
    return rec.ModelRecord(model_id, "onnx", path)


async def test_a_compacted_watch_reloads_and_listeners_hear_every_change_of_the_gap(tmp_path) -> None:
    etcd = LocalEtcd(tmp_path / "etcd")
    etcd.start()
    proxy = CuttableProxy(etcd.host, etcd.port)
    await proxy.restore()
    keys = KeySchema("reload")
    writer_store = EtcdStore(etcd.endpoint, timeout_s=2.0)
    mirror_store = EtcdStore(proxy.endpoint, timeout_s=2.0)
    await writer_store.start()
    await mirror_store.start()
    writer = Registry(writer_store, keys)
    mirror = RegistryMirror(mirror_store, keys)
    heard: list[tuple[ParsedKey, Any]] = []
    mirror.subscribe(lambda key, record: heard.append((key, record)))
    try:
        await writer.create_model(_model("kept", "/a.onnx"))
        await writer.create_model(_model("changed", "/old.onnx"))
        await writer.create_model(_model("deleted", "/d.onnx"))
        await mirror.start()
        assert set(mirror.models) == {"kept", "changed", "deleted"}

        await proxy.cut()
        await writer.put_model(_model("changed", "/new.onnx"))
        await writer.delete_model("deleted")
        await writer.create_model(_model("added", "/n.onnx"))
        async with aetcd.Client(host=etcd.host, port=etcd.port) as raw:
            await raw.compact(await writer_store.revision())  # the mirror's next revision is gone
        await proxy.restore()

        await _until("mirror reloaded", lambda: set(mirror.models) == {"kept", "changed", "added"})
        assert mirror.models["changed"].path == "/new.onnx"
        by_name = {k.name: r for k, r in heard if k.kind == "model"}
        assert by_name.keys() == {"changed", "deleted", "added"}  # "kept" did not change
        assert by_name["deleted"] is None and by_name["added"].path == "/n.onnx"
        assert by_name["changed"].path == "/new.onnx"
        assert any(k.kind == "policy" for k, _ in heard)  # its listeners re-read it
        # The watch runs again after the reload.
        await writer.create_model(_model("later", "/l.onnx"))
        await _until("watch resumed", lambda: "later" in mirror.models)
    finally:
        await mirror.stop()
        await proxy.cut()
        await mirror_store.close()
        await writer_store.close()
        etcd.cleanup()
