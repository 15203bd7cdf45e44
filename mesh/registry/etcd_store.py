"""KVStore over etcd v3, through aetcd's channel and generated stubs.

aetcd's high-level calls lack range limits, read revisions and txn headers, and
its watcher does not notice a stream that ends without an error, so this module
speaks the KV, Lease and Watch services directly on aetcd's connection.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aetcd
import grpc
from aetcd import rpc
from aetcd.utils import prefix_range_end

from mesh.errors import RegistryUnavailable
from mesh.registry.store import KeyValue, LeaseLost, Page, WatchCompacted, WatchEvent
from mesh.security.tls import ChannelTls
from mesh.settings import parse_host_port

log = logging.getLogger(__name__)
T = TypeVar("T")

_CONNECTION_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
}


#: gRPC's default reconnect backoff grows to 120 s: after a long etcd outage a client
#: would sit out most of a minute with etcd back. Capped at 1 s, every client (lease
#: keep-alive, watch, writes) is back within a second of etcd.
CHANNEL_OPTIONS = {"grpc.initial_reconnect_backoff_ms": 100, "grpc.min_reconnect_backoff_ms": 100,
                   "grpc.max_reconnect_backoff_ms": 1000}
#: Longest pause (before jitter) between attempts to re-open a broken watch.
WATCH_RETRY_MAX_S = 0.5


def _kv(kv: Any) -> KeyValue:
    return KeyValue(kv.key, kv.value, kv.mod_revision, kv.create_revision, kv.lease)


class EtcdStore:
    """One etcd endpoint. Every call is bounded by ``timeout_s``."""

    def __init__(self, endpoint: str, *, timeout_s: float = 5.0, connect_timeout_s: float | None = None,
                 on_error: Callable[[str], None] | None = None, tls: ChannelTls | None = None) -> None:
        self.endpoint = endpoint
        #: Called with the operation's name ("get", "put", "watch"...) when one fails (metrics).
        self._on_error = on_error
        self.description = f"etcd at {endpoint}"
        self._host, self._port = parse_host_port(endpoint, what="etcd endpoint")
        self._timeout = timeout_s
        self._connect_timeout = timeout_s if connect_timeout_s is None else connect_timeout_s
        if tls is None:
            self._client = aetcd.Client(host=self._host, port=self._port, timeout=None, options=dict(CHANNEL_OPTIONS))
        else:
            from mesh.registry.etcd_tls import TlsEtcdClient

            self._client = TlsEtcdClient(self._host, self._port, tls)
            self.description = f"etcd at {endpoint} (TLS)"

    # -- connection --------------------------------------------------------

    async def start(self) -> None:
        await self._client.connect()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._connect_timeout
        delay = 0.05
        last: BaseException | None = None
        while True:
            try:
                await self._client.kvstub.Range(
                    rpc.RangeRequest(key=b"\0", limit=1, count_only=True),
                    timeout=max(0.1, min(self._timeout, deadline - loop.time())),
                )
                return
            except grpc.RpcError as e:
                last = e
            if loop.time() + delay >= deadline:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        raise RegistryUnavailable(
            f"{self.description} is unreachable after {self._connect_timeout:.1f}s "
            f"({_describe(last)}); check that etcd is running and the --etcd / "
            "MESHSERVE_ETCD setting"
        )

    async def close(self) -> None:
        await self._client.close()

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            if self._client.kvstub is None:
                await self._client.connect()
            return await fn()
        except grpc.RpcError as e:
            self._failed(what)
            raise RegistryUnavailable(f"{self.description}: {what} failed ({_describe(e)})") from None

    def _failed(self, what: str) -> None:
        if self._on_error is not None:
            self._on_error(what)

    # -- keys --------------------------------------------------------------

    async def get(self, key: bytes) -> KeyValue | None:
        resp = await self._call(
            "get", lambda: self._client.kvstub.Range(rpc.RangeRequest(key=key), timeout=self._timeout)
        )
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        resp = await self._call(
            "put",
            lambda: self._client.kvstub.Put(rpc.PutRequest(key=key, value=value, lease=lease), timeout=self._timeout),
        )
        return int(resp.header.revision)

    async def _txn(self, what: str, req: Any) -> Any:
        return await self._call(what, lambda: self._client.kvstub.Txn(req, timeout=self._timeout))

    async def put_if(self, key: bytes, value: bytes, *, mod_revision: int, lease: int = 0,
                     prefix_unchanged: tuple[bytes, int] | None = None) -> int | None:
        compare = [_mod_compare(key, mod_revision)]
        if prefix_unchanged is not None:
            prefix, rev = prefix_unchanged
            # A range compare holds for every key in the range (an empty range
            # compares as one zero-valued key, so it holds too).
            compare.append(rpc.Compare(key=prefix, range_end=prefix_range_end(prefix), result=rpc.Compare.LESS,
                                       target=rpc.Compare.MOD, mod_revision=rev + 1))
        req = rpc.TxnRequest(
            compare=compare,
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))],
        )
        resp = await self._txn("compare-and-set", req)
        return int(resp.header.revision) if resp.succeeded else None

    async def create_many(self, items: list[tuple[bytes, bytes]]) -> list[int | None]:
        # One transaction of nested ones: each create succeeds or fails on its own,
        # and the whole batch is one round trip and one raft entry (one revision).
        req = rpc.TxnRequest(success=[
            rpc.RequestOp(request_txn=rpc.TxnRequest(
                compare=[_mod_compare(key, 0)], success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))]))
            for key, value in items])
        resp = await self._txn("create", req)
        revision = int(resp.header.revision)
        return [revision if r.response_txn.succeeded else None for r in resp.responses]

    async def write_many(self, puts: list[tuple[bytes, bytes]], deletes: list[bytes], *, lease: int = 0) -> int:
        req = rpc.TxnRequest(success=[
            *(rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=v, lease=lease)) for k, v in puts),
            *(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k)) for k in deletes)])
        resp = await self._txn("write", req)
        return int(resp.header.revision)

    async def delete(self, key: bytes) -> bool:
        resp = await self._call(
            "delete", lambda: self._client.kvstub.DeleteRange(rpc.DeleteRangeRequest(key=key), timeout=self._timeout)
        )
        return bool(resp.deleted)

    async def delete_if(self, key: bytes, *, mod_revision: int) -> bool:
        req = rpc.TxnRequest(
            compare=[_mod_compare(key, mod_revision)],
            success=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))],
        )
        resp = await self._txn("compare-and-delete", req)
        return bool(resp.succeeded and resp.responses and resp.responses[0].response_delete_range.deleted)

    async def delete_prefix(self, prefix: bytes) -> int:
        req = rpc.DeleteRangeRequest(key=prefix, range_end=prefix_range_end(prefix))
        resp = await self._call("delete", lambda: self._client.kvstub.DeleteRange(req, timeout=self._timeout))
        return int(resp.deleted)

    async def list(
        self, prefix: bytes, *, limit: int = 0, start_after: bytes | None = None, revision: int = 0
    ) -> Page:
        start = start_after + b"\0" if start_after is not None else prefix
        req = rpc.RangeRequest(key=start, range_end=prefix_range_end(prefix), limit=limit, revision=revision)
        resp = await self._call("list", lambda: self._client.kvstub.Range(req, timeout=self._timeout))
        return Page([_kv(kv) for kv in resp.kvs], bool(resp.more), int(resp.header.revision))

    async def revision(self) -> int:
        req = rpc.RangeRequest(key=b"\0", limit=1, count_only=True)
        resp = await self._call("revision", lambda: self._client.kvstub.Range(req, timeout=self._timeout))
        return int(resp.header.revision)

    # -- leases ------------------------------------------------------------

    async def grant_lease(self, ttl_s: int) -> int:
        resp = await self._call(
            "lease grant",
            lambda: self._client.leasestub.LeaseGrant(rpc.LeaseGrantRequest(TTL=ttl_s), timeout=self._timeout),
        )
        return int(resp.ID)

    async def refresh_lease(self, lease_id: int) -> int:
        async def once() -> int:
            call = self._client.leasestub.LeaseKeepAlive(
                iter([rpc.LeaseKeepAliveRequest(ID=lease_id)]), timeout=self._timeout
            )
            async for reply in call:
                return int(reply.TTL)
            return 0

        ttl = await self._call("lease keep-alive", once)
        if ttl <= 0:
            raise LeaseLost(f"lease {lease_id:x} on {self.description} expired or was revoked")
        return ttl

    async def revoke_lease(self, lease_id: int) -> None:
        try:
            if self._client.leasestub is None:
                await self._client.connect()
            await self._client.leasestub.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease_id), timeout=self._timeout)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return  # already expired or revoked: nothing to do
            raise RegistryUnavailable(f"{self.description}: lease revoke failed ({_describe(e)})") from None

    # -- watch -------------------------------------------------------------

    async def watch(self, prefix: bytes, *, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Re-opens the stream from the next unseen revision whenever it breaks."""
        next_rev = start_revision
        failures = 0
        while True:
            requests: asyncio.Queue[Any] = asyncio.Queue()
            create = rpc.WatchCreateRequest(
                key=prefix, range_end=prefix_range_end(prefix), start_revision=next_rev, progress_notify=True
            )
            await requests.put(rpc.WatchRequest(create_request=create))

            async def request_iter() -> AsyncIterator[Any]:
                while True:
                    yield await requests.get()

            try:
                if self._client.kvstub is None:
                    await self._client.connect()
                stub = rpc.WatchStub(self._client.channel)
                call = stub.Watch(request_iter())
                try:
                    async for resp in call:
                        if resp.compact_revision and resp.compact_revision > next_rev:
                            raise WatchCompacted(int(resp.compact_revision))
                        if resp.canceled:
                            log.warning("%s cancelled a watch: %s", self.description, resp.cancel_reason)
                            break
                        failures = 0
                        for ev in resp.events:
                            rev = int(ev.kv.mod_revision)
                            if rev < next_rev:
                                continue  # already delivered before a reconnect
                            if ev.type == rpc.Event.DELETE:
                                yield WatchEvent("delete", ev.kv.key, b"", rev)
                            else:
                                yield WatchEvent("put", ev.kv.key, ev.kv.value, rev)
                        if resp.events:
                            next_rev = int(resp.events[-1].kv.mod_revision) + 1
                        elif resp.header.revision >= next_rev and not resp.created:
                            # Progress notification: nothing under the prefix up to here.
                            next_rev = int(resp.header.revision) + 1
                finally:
                    call.cancel()
            except grpc.RpcError as e:
                failures += 1
                self._failed("watch")
                # Once per outage, not every retry (they come twice a second while etcd is down).
                (log.info if failures == 1 else log.debug)(
                    "watch on %s broke (%s); resuming from revision %d", self.description, _describe(e), next_rev)
            # Backoff with jitter before re-watching; etcd may be restarting.
            await asyncio.sleep(min(WATCH_RETRY_MAX_S, 0.05 * 2 ** min(failures, 6)) * (0.5 + random.random()))


def _mod_compare(key: bytes, mod_revision: int) -> Any:
    if mod_revision == 0:
        return rpc.Compare(key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.VERSION, version=0)
    return rpc.Compare(key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.MOD, mod_revision=mod_revision)


def _describe(e: BaseException | None) -> str:
    if isinstance(e, grpc.RpcError) and hasattr(e, "code"):
        return f"{e.code().name}: {e.details()}"
    return repr(e)
