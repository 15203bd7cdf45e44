"""aetcd's client over a TLS channel (aetcd itself only dials plaintext).

Same attributes as ``aetcd.Client.connect`` sets (stubs, watcher), on a secure
channel built from the process's etcd CA and client certificate.
"""

from __future__ import annotations

import aetcd
from aetcd import rpc, watcher

from mesh.registry.etcd_store import CHANNEL_OPTIONS
from mesh.security.tls import ChannelTls


class TlsEtcdClient(aetcd.Client):  # type: ignore[misc]
    def __init__(self, host: str, port: int, tls: ChannelTls) -> None:
        super().__init__(host=host, port=port, timeout=None, options=dict(CHANNEL_OPTIONS))
        self._tls = tls

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        # Credentials are re-read here, so a reconnect after a rotation uses the new files.
        self.channel = rpc.secure_channel(f"{self._host}:{self._port}", self._tls.credentials(),
                                          options=self._options.items())
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = watcher.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata)
        self._connected.set()
