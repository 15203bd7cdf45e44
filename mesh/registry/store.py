"""The key-value store contract the registry is built on.

Two implementations keep it: :class:`~mesh.registry.etcd_store.EtcdStore` (etcd
through aetcd) and :class:`~mesh.registry.memory_store.MemoryStore` (one process,
unit tests). ``tests/test_store_contract.py`` runs the same suite against both.

Revisions are etcd's: one global counter, bumped by every write; a key's
``mod_revision`` is the revision of its last write. Compare-and-set writes take
the mod revision the caller read (0 = the key must not exist).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

from mesh.errors import MeshError, Unavailable


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    mod_revision: int
    create_revision: int = 0
    lease: int = 0


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    key: bytes
    #: Empty for deletes.
    value: bytes
    revision: int


@dataclass(frozen=True, slots=True)
class Page:
    items: list[KeyValue]
    #: More keys follow; ask again with ``start_after=items[-1].key``.
    more: bool
    #: The store revision the page was read at (pass it back for a consistent scan).
    revision: int


class WatchCompacted(MeshError):
    """The watch's start revision was compacted away: reload, then watch again."""

    code = "OUT_OF_RANGE"

    def __init__(self, compacted_revision: int) -> None:
        super().__init__(f"revisions below {compacted_revision} were compacted")
        self.compacted_revision = compacted_revision


class LeaseLost(Unavailable):
    """The lease expired or was revoked; its keys are gone."""


class KVStore(Protocol):
    #: Human description for messages, e.g. "etcd at 127.0.0.1:2379".
    description: str

    async def start(self) -> None:
        """Connects; raises RegistryUnavailable after a bounded wait."""
        ...

    async def close(self) -> None: ...

    async def get(self, key: bytes) -> KeyValue | None: ...

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Writes unconditionally; returns the new revision."""
        ...

    async def put_if(self, key: bytes, value: bytes, *, mod_revision: int, lease: int = 0,
                     prefix_unchanged: tuple[bytes, int] | None = None) -> int | None:
        """Writes only if the key's mod revision is ``mod_revision`` (0: absent),
        and, with ``prefix_unchanged=(prefix, rev)``, only if no key under
        ``prefix`` was written after revision ``rev``.

        Returns the new revision, or None when another writer won.
        """
        ...

    async def create_many(self, items: list[tuple[bytes, bytes]]) -> list[int | None]:
        """Creates each key that does not exist yet, in one round trip (keys distinct).

        Returns, per item, the revision it was written at, or None where the key
        existed (that item only: the others are still written).
        """
        ...

    async def write_many(self, puts: list[tuple[bytes, bytes]], deletes: list[bytes], *, lease: int = 0) -> int:
        """Puts (under ``lease``) and deletes in one transaction (keys distinct);
        returns its revision."""
        ...

    async def delete(self, key: bytes) -> bool:
        """True if the key existed."""
        ...

    async def delete_if(self, key: bytes, *, mod_revision: int) -> bool:
        """Deletes only if unchanged since ``mod_revision``; True if deleted."""
        ...

    async def delete_prefix(self, prefix: bytes) -> int:
        """Deletes every key under ``prefix``; returns how many."""
        ...

    async def list(
        self, prefix: bytes, *, limit: int = 0, start_after: bytes | None = None, revision: int = 0
    ) -> Page:
        """Keys under ``prefix`` in key order, at most ``limit`` (0: all), after
        ``start_after``, read at ``revision`` (0: now)."""
        ...

    async def revision(self) -> int:
        """The store's current revision."""
        ...

    async def grant_lease(self, ttl_s: int) -> int:
        """A new lease id; keys put under it vanish ``ttl_s`` after the last refresh."""
        ...

    async def refresh_lease(self, lease_id: int) -> int:
        """Keeps a lease alive; returns its TTL, raises LeaseLost if it is gone."""
        ...

    async def revoke_lease(self, lease_id: int) -> None: ...

    def watch(self, prefix: bytes, *, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Every change under ``prefix`` from ``start_revision`` on, in order, each once.

        Survives connection loss (re-watches from the last revision seen);
        raises WatchCompacted when it cannot resume.
        """
        ...
