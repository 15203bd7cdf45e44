"""gRPC channels to runtime instances: typed SPI calls and raw-byte forwarding."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from mesh.proto.mmesh import model_runtime_pb2 as spi
from mesh.proto.mmesh import model_runtime_pb2_grpc as spi_grpc
from mesh.security.tls import ChannelTls, aio_channel


class RuntimeClients:
    """One channel per runtime endpoint, reused for every call."""

    def __init__(self, max_message_bytes: int, *, tls: ChannelTls | None = None, token: str = "") -> None:
        """``tls``: runtimes serve TLS (and may want this router's certificate);
        ``token``: presented on SPI calls (never on forwarded inference)."""
        self._tls = tls
        self._spi_md: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self._options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            # The router retries on other copies itself; gRPC's own retry machinery
            # would only add per-call bookkeeping on the hot path.
            ("grpc.enable_retries", 0),
        ]
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._raw: dict[tuple[str, str], Any] = {}
        self._spi: dict[str, spi_grpc.ModelRuntimeStub] = {}

    def _channel(self, endpoint: str) -> grpc.aio.Channel:
        ch = self._channels.get(endpoint)
        if ch is None:
            ch = self._channels[endpoint] = aio_channel(endpoint, self._tls, self._options)
        return ch

    def raw(self, endpoint: str, method: str) -> Any:
        """A unary callable taking and returning bytes (no (de)serialisation)."""
        key = (endpoint, method)
        call = self._raw.get(key)
        if call is None:
            call = self._raw[key] = self._channel(endpoint).unary_unary(method)
        return call

    def spi(self, endpoint: str) -> spi_grpc.ModelRuntimeStub:
        stub = self._spi.get(endpoint)
        if stub is None:
            stub = self._spi[endpoint] = spi_grpc.ModelRuntimeStub(self._channel(endpoint))
        return stub

    async def load_model(self, endpoint: str, model_id: str, type_: str, path: str, key: str,
                         timeout_s: float, *, mesh_full: bool = False) -> Any:
        """``mesh_full``: no eligible runtime had room, so the runtime's churn guard applies
        (the ``meshserve-mesh-full`` header; other ModelMesh runtimes ignore it)."""
        req = spi.LoadModelRequest(modelId=model_id, modelType=type_, modelPath=path, modelKey=key)
        metadata = self._spi_md + ((("meshserve-mesh-full", "1"),) if mesh_full else ())
        return await self.spi(endpoint).loadModel(req, timeout=timeout_s, metadata=metadata)

    async def unload_model(self, endpoint: str, model_id: str, timeout_s: float = 30.0) -> None:
        await self.spi(endpoint).unloadModel(spi.UnloadModelRequest(modelId=model_id), timeout=timeout_s,
                                              metadata=self._spi_md)

    def forget(self, endpoint: str) -> None:
        """Drops the channel of an instance that left."""
        ch = self._channels.pop(endpoint, None)
        self._spi.pop(endpoint, None)
        for k in [k for k in self._raw if k[0] == endpoint]:
            del self._raw[k]
        if ch is not None:
            # Closing is async; let the channel's own cleanup finish in the background.
            asyncio.get_running_loop().create_task(ch.close())

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
        self._raw.clear()
        self._spi.clear()
