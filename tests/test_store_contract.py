"""The KVStore contract, run against etcd and the in-memory store alike."""

from __future__ import annotations

import asyncio

import pytest

from mesh.registry.keys import KeySchema
from mesh.registry.store import LeaseLost, WatchEvent


async def collect(store, prefix: bytes, start: int, n: int, timeout: float = 10.0) -> list[WatchEvent]:
    out: list[WatchEvent] = []

    async def run() -> None:
        async for ev in store.watch(prefix, start_revision=start):
            out.append(ev)
            if len(out) >= n:
                return

    await asyncio.wait_for(run(), timeout)
    return out


async def test_put_get_delete(store, keys: KeySchema) -> None:
    k = keys.model("a")
    assert await store.get(k) is None
    rev = await store.put(k, b"1")
    kv = await store.get(k)
    assert kv.value == b"1" and kv.mod_revision == rev
    assert await store.delete(k) is True
    assert await store.delete(k) is False
    assert await store.get(k) is None


async def test_list_pages_in_key_order(store, keys: KeySchema) -> None:
    for i in range(25):
        await store.put(keys.model(f"m{i:03d}"), str(i).encode())
    await store.put(keys.vmodel("other"), b"x")  # outside the listed prefix
    seen: list[bytes] = []
    start = None
    while True:
        page = await store.list(keys.models, limit=10, start_after=start)
        seen += [kv.key for kv in page.items]
        if not page.more:
            break
        start = page.items[-1].key
    assert seen == [keys.model(f"m{i:03d}") for i in range(25)]
    assert len((await store.list(keys.models)).items) == 25


async def test_compare_and_set(store, keys: KeySchema) -> None:
    k = keys.model("cas")
    assert await store.put_if(k, b"v1", mod_revision=0) is not None  # create
    assert await store.put_if(k, b"again", mod_revision=0) is None  # exists now
    kv = await store.get(k)
    assert await store.put_if(k, b"v2", mod_revision=kv.mod_revision) is not None
    assert await store.put_if(k, b"stale", mod_revision=kv.mod_revision) is None
    assert (await store.get(k)).value == b"v2"
    assert await store.delete_if(k, mod_revision=kv.mod_revision) is False
    assert await store.delete_if(k, mod_revision=(await store.get(k)).mod_revision) is True


async def test_two_concurrent_cas_writers_one_wins(store, keys: KeySchema) -> None:
    k = keys.model("race")
    await store.put(k, b"0")
    base = (await store.get(k)).mod_revision
    results = await asyncio.gather(*(store.put_if(k, f"w{i}".encode(), mod_revision=base) for i in range(2)))
    assert sum(r is not None for r in results) == 1
    winner = [i for i, r in enumerate(results) if r is not None][0]
    assert (await store.get(k)).value == f"w{winner}".encode()


async def test_delete_prefix(store, keys: KeySchema) -> None:
    for i in range(3):
        await store.put(keys.copy("m", f"i{i}"), b"x")
    await store.put(keys.copy("m2", "i0"), b"x")
    assert await store.delete_prefix(keys.copies_of("m")) == 3
    assert len((await store.list(keys.copies)).items) == 1


async def test_lease_not_kept_alive_expires_and_keys_vanish(store, keys: KeySchema) -> None:
    lease = await store.grant_lease(2)
    k = keys.instance("short-lived")
    await store.put(k, b"x", lease=lease)
    assert await store.refresh_lease(lease) > 0
    deadline = asyncio.get_running_loop().time() + 10
    while await store.get(k) is not None:
        assert asyncio.get_running_loop().time() < deadline, "leased key outlived its lease"
        await asyncio.sleep(0.2)
    with pytest.raises(LeaseLost):
        await store.refresh_lease(lease)


async def test_revoked_lease_removes_keys_at_once(store, keys: KeySchema) -> None:
    lease = await store.grant_lease(30)
    await store.put(keys.instance("a"), b"x", lease=lease)
    await store.put(keys.copy("m", "a"), b"x", lease=lease)
    await store.revoke_lease(lease)
    assert await store.get(keys.instance("a")) is None
    assert await store.get(keys.copy("m", "a")) is None


async def test_watch_replays_from_revision_in_order(store, keys: KeySchema) -> None:
    first = await store.put(keys.model("w1"), b"1")
    await store.put(keys.model("w2"), b"2")
    await store.delete(keys.model("w1"))
    await store.put(keys.vmodel("not-watched"), b"x")
    events = await collect(store, keys.models, first, 3)
    assert [(e.kind, e.key) for e in events] == [
        ("put", keys.model("w1")), ("put", keys.model("w2")), ("delete", keys.model("w1"))
    ]
    assert [e.revision for e in events] == sorted(e.revision for e in events)


async def test_watch_sees_live_changes(store, keys: KeySchema) -> None:
    start = await store.revision() + 1
    task = asyncio.create_task(collect(store, keys.models, start, 5))
    await asyncio.sleep(0.2)
    for i in range(5):
        await store.put(keys.model(f"live{i}"), b"v")
    events = await task
    assert [e.key for e in events] == [keys.model(f"live{i}") for i in range(5)]


async def test_put_if_prefix_unchanged(store, keys: KeySchema) -> None:
    seen = await store.put(keys.copy("m", "a"), b"x")
    # Nothing under the prefix changed since `seen`: the claim goes through.
    assert await store.put_if(keys.copy("m", "b"), b"y", mod_revision=0, prefix_unchanged=(keys.copies_of("m"), seen))
    # Now something did (the claim above): a claim decided at `seen` loses.
    assert await store.put_if(keys.copy("m", "c"), b"z", mod_revision=0,
                              prefix_unchanged=(keys.copies_of("m"), seen)) is None
    # An empty range never blocks.
    assert await store.put_if(keys.copy("n", "a"), b"z", mod_revision=0, prefix_unchanged=(keys.copies_of("n"), 1))


async def test_create_many_creates_the_absent_keys_and_reports_each(store, keys: KeySchema) -> None:
    await store.put(keys.model("taken"), b"old")
    items = [(keys.model("new-1"), b"1"), (keys.model("taken"), b"x"), (keys.model("new-2"), b"2")]
    revs = await store.create_many(items)
    assert revs[1] is None and revs[0] is not None and revs[2] is not None
    assert [(await store.get(k)).value for k, _ in items] == [b"1", b"old", b"2"]
    kv = await store.get(keys.model("new-2"))
    assert kv.mod_revision == revs[2]
    assert await store.create_many([]) == []


async def test_concurrent_creates_of_one_key_through_a_registry_one_wins(store, keys: KeySchema) -> None:
    from mesh.errors import AlreadyExists
    from mesh.registry import records as rec
    from mesh.registry.registry import Registry

    reg = Registry(store, keys)
    models = [rec.ModelRecord(f"m{i % 5}", "onnx", f"/p/{i}", registered_ms=1, last_used_ms=1) for i in range(40)]
    results = await asyncio.gather(*(reg.create_model(m) for m in models), return_exceptions=True)
    won = [m for m, r in zip(models, results) if isinstance(r, int)]
    assert all(isinstance(r, AlreadyExists) for r in results if not isinstance(r, int))
    assert sorted(m.model_id for m in won) == [f"m{i}" for i in range(5)]  # one winner per id
    for m in won:
        assert (await reg.get_model(m.model_id)).record.path == m.path


async def test_write_many_puts_and_deletes_in_one_go(store, keys: KeySchema) -> None:
    lease = await store.grant_lease(30)
    await store.put(keys.copy("gone", "i1"), b"old")
    rev = await store.write_many([(keys.copy("a", "i1"), b"A"), (keys.copy("b", "i1"), b"B")],
                                 [keys.copy("gone", "i1"), keys.copy("never", "i1")], lease=lease)
    assert (await store.get(keys.copy("a", "i1"))).lease == lease
    assert (await store.get(keys.copy("b", "i1"))).mod_revision <= rev
    assert await store.get(keys.copy("gone", "i1")) is None
    await store.revoke_lease(lease)
    assert await store.get(keys.copy("a", "i1")) is None  # the puts went under the lease
