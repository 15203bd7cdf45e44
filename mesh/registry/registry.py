"""Typed access to the registry: records in, records out, races as Conflict."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic

from mesh.errors import AlreadyExists, Conflict, CorruptRecord, InvalidArgument
from mesh.registry import records as rec
from mesh.registry.batcher import CreateBatcher
from mesh.registry.ids import validate_id
from mesh.registry.keys import KeySchema
from mesh.registry.records import R
from mesh.registry.store import KVStore

log = logging.getLogger(__name__)

MAX_PAGE = 1000
CAS_ATTEMPTS = 16


@dataclass(frozen=True, slots=True)
class Versioned(Generic[R]):
    record: R
    #: etcd mod revision the record was read at (for compare-and-set).
    mod_revision: int


def _token(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode()


def _untoken(token: str, prefix: bytes) -> bytes:
    try:
        key = base64.urlsafe_b64decode(token.encode())
    except (ValueError, UnicodeError):
        key = b""
    if not key.startswith(prefix):
        raise InvalidArgument("page_token is not one this server issued: pass next_page_token unchanged")
    return key


class Registry:
    def __init__(self, store: KVStore, keys: KeySchema) -> None:
        self.store = store
        self.keys = keys
        self._creates = CreateBatcher(store)

    # -- generic -----------------------------------------------------------

    async def _get(self, cls: type[R], key: bytes) -> Versioned[R] | None:
        kv = await self.store.get(key)
        if kv is None:
            return None
        return Versioned(rec.decode(cls, kv.value), kv.mod_revision)

    async def _update(self, cls: type[R], key: bytes, fn: Callable[[R | None], R | None]) -> Versioned[R] | None:
        """Read-modify-write with compare-and-set; ``fn`` returning None deletes."""
        for _ in range(CAS_ATTEMPTS):
            kv = await self.store.get(key)
            current = rec.decode(cls, kv.value) if kv else None
            new = fn(current)
            mod = kv.mod_revision if kv else 0
            if new is None:
                if kv is None or await self.store.delete_if(key, mod_revision=mod):
                    return None
                continue
            revision = await self.store.put_if(key, rec.encode(new), mod_revision=mod)
            if revision is not None:
                return Versioned(new, revision)
        raise Conflict(f"{key.decode(errors='replace')} changed {CAS_ATTEMPTS} times while being updated; try again")

    async def _list(
        self, cls: type[R], prefix: bytes, limit: int, page_token: str
    ) -> tuple[list[R], str]:
        limit = min(limit or 100, MAX_PAGE)
        start = _untoken(page_token, prefix) if page_token else None
        page = await self.store.list(prefix, limit=limit, start_after=start)
        out: list[R] = []
        for kv in page.items:
            try:
                out.append(rec.decode(cls, kv.value))
            except CorruptRecord as e:
                log.error("skipping corrupt record %s: %s", kv.key.decode(errors="replace"), e)
        return out, (_token(page.items[-1].key) if page.more and page.items else "")

    # -- models ------------------------------------------------------------

    async def get_model(self, model_id: str) -> Versioned[rec.ModelRecord] | None:
        return await self._get(rec.ModelRecord, self.keys.model(validate_id(model_id)))

    async def create_model(self, model: rec.ModelRecord) -> int:
        key = self.keys.model(validate_id(model.model_id))
        revision = await self._creates.create(key, rec.encode(model))  # batched with concurrent creates
        if revision is None:
            raise AlreadyExists(f"model {model.model_id!r} is already registered")
        return revision

    async def put_model(self, model: rec.ModelRecord) -> int:
        return await self.store.put(self.keys.model(validate_id(model.model_id)), rec.encode(model))

    async def update_model(
        self, model_id: str, fn: Callable[[rec.ModelRecord | None], rec.ModelRecord | None]
    ) -> Versioned[rec.ModelRecord] | None:
        return await self._update(rec.ModelRecord, self.keys.model(validate_id(model_id)), fn)

    async def delete_model(self, model_id: str) -> bool:
        return await self.store.delete(self.keys.model(validate_id(model_id)))

    async def list_models(self, prefix: str = "", limit: int = 100, page_token: str = "") -> tuple[list[rec.ModelRecord], str]:
        return await self._list(rec.ModelRecord, self.keys.models + prefix.encode(), limit, page_token)

    # -- vmodels -----------------------------------------------------------

    async def get_vmodel(self, vmodel_id: str) -> Versioned[rec.VModelRecord] | None:
        return await self._get(rec.VModelRecord, self.keys.vmodel(validate_id(vmodel_id, what="vmodel id")))

    async def update_vmodel(
        self, vmodel_id: str, fn: Callable[[rec.VModelRecord | None], rec.VModelRecord | None]
    ) -> Versioned[rec.VModelRecord] | None:
        return await self._update(rec.VModelRecord, self.keys.vmodel(validate_id(vmodel_id, what="vmodel id")), fn)

    async def delete_vmodel(self, vmodel_id: str) -> bool:
        return await self.store.delete(self.keys.vmodel(validate_id(vmodel_id, what="vmodel id")))

    async def list_vmodels(self, prefix: str = "", limit: int = 100, page_token: str = "") -> tuple[list[rec.VModelRecord], str]:
        return await self._list(rec.VModelRecord, self.keys.vmodels + prefix.encode(), limit, page_token)

    # -- instances and copies (written under the instance's lease) ---------

    async def put_instance(self, instance: rec.InstanceRecord, *, lease: int) -> int:
        return await self.store.put(self.keys.instance(instance.instance_id), rec.encode(instance), lease=lease)

    async def get_instance(self, instance_id: str) -> Versioned[rec.InstanceRecord] | None:
        return await self._get(rec.InstanceRecord, self.keys.instance(instance_id))

    async def delete_instance(self, instance_id: str) -> bool:
        return await self.store.delete(self.keys.instance(instance_id))

    async def list_instances(self) -> list[rec.InstanceRecord]:
        out, token = await self._list(rec.InstanceRecord, self.keys.instances, MAX_PAGE, "")
        while token:
            more, token = await self._list(rec.InstanceRecord, self.keys.instances, MAX_PAGE, token)
            out.extend(more)
        return out

    async def put_copy(self, copy: rec.CopyRecord, *, lease: int) -> int:
        return await self.store.put(self.keys.copy(copy.model_id, copy.instance_id), rec.encode(copy), lease=lease)

    async def claim_copy(self, copy: rec.CopyRecord, *, lease: int, copies_seen_at: int | None = None) -> int | None:
        """Creates the copy key only if absent: one loader per (model, instance).

        With ``copies_seen_at``, also only if no copy key of the model changed
        after that revision: the caller decided on a view of the model's copies
        as of then, so a claim by another router since makes this one fail
        (one load per model across routers, not just per instance).
        """
        prefix = (self.keys.copies_of(copy.model_id), copies_seen_at) if copies_seen_at is not None else None
        return await self.store.put_if(
            self.keys.copy(copy.model_id, copy.instance_id), rec.encode(copy), mod_revision=0, lease=lease,
            prefix_unchanged=prefix,
        )

    async def write_copies(self, copies: list[rec.CopyRecord], deleted: list[str], instance_id: str, *,
                           lease: int) -> int:
        """Puts ``copies`` (under ``lease``) and deletes the copy keys of the ``deleted``
        models on ``instance_id``, in one transaction; returns its revision."""
        return await self.store.write_many(
            [(self.keys.copy(c.model_id, c.instance_id), rec.encode(c)) for c in copies],
            [self.keys.copy(m, instance_id) for m in deleted], lease=lease)

    async def restore_instance(self, instance: rec.InstanceRecord, copies: list[rec.CopyRecord], *,
                               lease: int, batch: int = 127) -> int:
        """Re-creates an instance's record and copy keys under a new ``lease`` (after the
        old one expired): the record and the first copies in one transaction, the rest
        in transactions of ``batch`` (etcd's default limit is 128 operations); returns
        the last revision."""
        puts = [(self.keys.instance(instance.instance_id), rec.encode(instance)),
                *((self.keys.copy(c.model_id, c.instance_id), rec.encode(c)) for c in copies)]
        revision = 0
        for start in range(0, len(puts), batch):
            revision = await self.store.write_many(puts[start:start + batch], [], lease=lease)
        return revision

    async def delete_copy(self, model_id: str, instance_id: str) -> bool:
        return await self.store.delete(self.keys.copy(model_id, instance_id))

    async def list_copies(self, model_id: str) -> list[rec.CopyRecord]:
        out, _ = await self._list(rec.CopyRecord, self.keys.copies_of(model_id), MAX_PAGE, "")
        return out

    async def drain_instance(self, instance_id: str, *, lease: int) -> int:
        """Marks an instance drained; under its lease, so the mark leaves with it."""
        return await self.store.put(self.keys.drain(instance_id), b"1", lease=lease)

    # -- KServe resources (mesh/kserve/) ------------------------------------

    async def get_resource(self, kind: str, name: str) -> Versioned[rec.ResourceRecord] | None:
        return await self._get(rec.ResourceRecord, self.keys.resource(kind, name))

    async def put_resource(self, resource: rec.ResourceRecord) -> int:
        return await self.store.put(self.keys.resource(resource.kind, resource.name), rec.encode(resource))

    async def delete_resource(self, kind: str, name: str) -> bool:
        return await self.store.delete(self.keys.resource(kind, name))

    # -- policy ------------------------------------------------------------

    async def get_policy(self) -> Versioned[rec.PolicyRecord] | None:
        return await self._get(rec.PolicyRecord, self.keys.policy)

    async def set_policy(self, policy: rec.PolicyRecord, *, expected_revision: int | None = None) -> int:
        data = rec.encode(policy)
        if expected_revision is None:
            return await self.store.put(self.keys.policy, data)
        revision = await self.store.put_if(self.keys.policy, data, mod_revision=expected_revision)
        if revision is None:
            raise Conflict("the policy changed since it was read: get it again and re-apply your change")
        return revision
