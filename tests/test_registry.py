"""Typed registry and mirror over both stores: records, CAS, paging, bad data."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest

from mesh.errors import AlreadyExists, InvalidArgument, InvalidModelId
from mesh.registry import records as rec
from mesh.registry.ids import validate_id
from mesh.registry.keys import KeySchema
from mesh.registry.mirror import RegistryMirror
from mesh.registry.registry import Registry


@pytest.fixture
def registry(store, keys: KeySchema) -> Registry:
    return Registry(store, keys)


async def test_model_create_update_delete(registry: Registry) -> None:
    m = rec.ModelRecord("resnet", "onnx", path="s3://b/resnet.onnx", registered_ms=5, labels={"team": "a"})
    await registry.create_model(m)
    with pytest.raises(AlreadyExists, match="resnet"):
        await registry.create_model(m)
    got = await registry.get_model("resnet")
    assert got is not None and got.record == m
    updated = await registry.update_model("resnet", lambda r: dataclasses.replace(r, size_bytes=123))
    assert updated is not None and updated.record.size_bytes == 123
    assert (await registry.get_model("resnet")).record.size_bytes == 123
    assert await registry.delete_model("resnet")
    assert await registry.get_model("resnet") is None


async def test_concurrent_updates_are_not_lost(registry: Registry) -> None:
    await registry.create_model(rec.ModelRecord("counter", "onnx"))

    def bump(r: rec.ModelRecord | None) -> rec.ModelRecord:
        assert r is not None
        return dataclasses.replace(r, refs=r.refs + 1)

    await asyncio.gather(*(registry.update_model("counter", bump) for _ in range(8)))
    assert (await registry.get_model("counter")).record.refs == 8


async def test_list_models_pages_with_prefix(registry: Registry) -> None:
    for i in range(12):
        await registry.create_model(rec.ModelRecord(f"team-a/m{i:02d}", "onnx"))
    await registry.create_model(rec.ModelRecord("team-b/m", "onnx"))
    ids: list[str] = []
    token = ""
    while True:
        page, token = await registry.list_models(prefix="team-a/", limit=5, page_token=token)
        ids += [m.model_id for m in page]
        if not token:
            break
    assert ids == [f"team-a/m{i:02d}" for i in range(12)]
    with pytest.raises(InvalidArgument, match="page_token"):
        await registry.list_models(page_token="bm9wZQ==")


@pytest.mark.parametrize(
    "bad,named",
    [("", "is empty"), ("a" * 257, "257 characters long: the limit is 256"), ("../etc/passwd", "contains '..'"),
     ("/lead", "starts or ends with '/'"), ("trail/", "starts or ends with '/'"), ("a//b", "contains '//'"),
     ("sp ace", "contains ' '"), ("new\nline", "contains '\\n'"), ("uni\u00e9", "contains '\u00e9'"),
     ("a*b?c*", "contains '*', '?'")],
)
def test_invalid_ids_are_refused_naming_the_problem(bad: str, named: str) -> None:
    with pytest.raises(InvalidModelId) as err:
        validate_id(bad)
    assert "model id" in str(err.value) and named in str(err.value)


@pytest.mark.parametrize("good", ["m", "team-a/resnet50:v2", "mnist-svm__isvc-6b2eb0b8bf", "a" * 256, "x@y+z=1.0"])
def test_valid_ids_pass(good: str) -> None:
    assert validate_id(good) == good


async def test_registry_refuses_bad_ids_before_touching_the_store(registry: Registry, store, keys: KeySchema) -> None:
    for bad in ("../x", "a b", "x//y"):
        with pytest.raises(InvalidModelId):
            await registry.create_model(rec.ModelRecord(bad, "onnx"))
        with pytest.raises(InvalidModelId):
            await registry.update_vmodel(bad, lambda cur: cur)
    assert (await store.list(keys.root)).items == []  # nothing written under the mesh


async def test_mirror_loads_then_follows(store, keys: KeySchema, registry: Registry) -> None:
    for i in range(30):
        await registry.create_model(rec.ModelRecord(f"m{i}", "onnx"))
    mirror = RegistryMirror(store, keys, page_size=7)
    await mirror.start()
    try:
        assert len(mirror.models) == 30
        lease = await store.grant_lease(30)
        inst = rec.InstanceRecord("rt-1", "127.0.0.1:9000", lease_id=lease, capacity_bytes=100)
        await registry.put_instance(inst, lease=lease)
        await registry.put_copy(rec.CopyRecord("m1", "rt-1", rec.LOADED, size_bytes=10), lease=lease)
        rev = await registry.delete_model("m0") and await store.revision()
        await mirror.wait_for(rev)
        assert "m0" not in mirror.models
        assert mirror.instances["rt-1"] == inst
        assert mirror.copies["m1"]["rt-1"].state == rec.LOADED
        await store.revoke_lease(lease)
        await mirror.wait_for(await store.revision())
        assert "rt-1" not in mirror.instances and "m1" not in mirror.copies
    finally:
        await mirror.stop()


async def test_corrupt_record_is_skipped_and_logged(store, keys: KeySchema, registry: Registry, caplog) -> None:
    await registry.create_model(rec.ModelRecord("good", "onnx"))
    await store.put(keys.model("bad-json"), b"{not json")
    await store.put(keys.model("bad-shape"), b'{"v": 1, "type": "onnx"}')
    await store.put(keys.model("future"), b'{"v": 99, "model_id": "future", "type": "onnx"}')
    mirror = RegistryMirror(store, keys)
    with caplog.at_level(logging.ERROR):
        await mirror.start()
        try:
            assert set(mirror.models) == {"good"}
            assert mirror.corrupt_records == 3
            rev = await store.put(keys.model("good"), b"\xff\xfe")
            await mirror.wait_for(rev)
            assert "good" not in mirror.models
        finally:
            await mirror.stop()
    assert "bad-json" in caplog.text and "corrupt" in caplog.text
    page, _ = await registry.list_models()
    assert [m.model_id for m in page] == []  # every stored value is corrupt now; none crash the listing


async def test_policy_compare_and_set(registry: Registry) -> None:
    assert await registry.get_policy() is None
    rev = await registry.set_policy(rec.PolicyRecord({"eviction": "lru"}))
    await registry.set_policy(rec.PolicyRecord({"eviction": "lfu"}), expected_revision=rev)
    from mesh.errors import Conflict

    with pytest.raises(Conflict):
        await registry.set_policy(rec.PolicyRecord({"eviction": "ttl"}), expected_revision=rev)
    assert (await registry.get_policy()).record.document == {"eviction": "lfu"}


def test_keys_round_trip() -> None:
    k = KeySchema("prod")
    assert k.prefix == "/meshserve/prod/"
    assert k.parse(k.copy("team/a:1", "rt-0")).name == "team/a:1"
    assert k.parse(k.copy("team/a:1", "rt-0")).instance_id == "rt-0"
    assert k.parse(k.model("x")).kind == "model"
    assert k.parse(b"/elsewhere/x") is None
