"""The policy document in effect in one process, changed live.

Precedence: the registry key ``config/policy`` when it is set, else the
``--policy-file`` document, else the built-in defaults. A document that fails
validation here (written straight into etcd, or naming a user policy this
process cannot import) is logged and counted, and the previous one stays.

Routers feed it from their registry mirror (:meth:`LivePolicy.apply` from a
mirror listener); runtimes, which keep no mirror, run :meth:`LivePolicy.follow`:
a read of the key and a watch on it, as an owned task. Either way a change
reaches every process within the watch's latency (milliseconds).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from mesh.errors import MeshError
from mesh.policy.document import PolicyDocument, load_file, validate_document
from mesh.registry import records as rec
from mesh.registry.store import KVStore, WatchCompacted

log = logging.getLogger(__name__)

Listener = Callable[[PolicyDocument], None]


class LivePolicy:
    def __init__(self, policy_file: str = "", *, on_error: Callable[[], None] | None = None) -> None:
        """Raises InvalidArgument when ``policy_file`` is unreadable or invalid (a start-up error)."""
        self._file_doc = load_file(policy_file) if policy_file else None
        self.document = self._file_doc or PolicyDocument()
        #: etcd mod revision of the document in effect (0: the file or the defaults).
        self.revision = 0
        self.source = f"file {policy_file}" if policy_file else "defaults"
        self._on_error = on_error
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        """``listener(document)`` runs now and after every change."""
        self._listeners.append(listener)
        listener(self.document)

    def tunable(self, name: str, default: Any) -> Any:
        """A router tunable: the document's ``router.<name>`` if set, else ``default``."""
        value = getattr(self.document.router, name)
        return default if value is None else value

    def apply(self, record: rec.PolicyRecord | None, revision: int) -> bool:
        """Makes the stored record (None: key deleted) the policy; False if refused."""
        if record is None:
            doc, source = self._file_doc or PolicyDocument(), "file" if self._file_doc else "defaults"
            revision = 0
        else:
            try:
                doc, source = validate_document(record.document), f"etcd revision {revision}"
            except MeshError as e:
                self._refused(f"the stored policy (revision {revision}) is refused, keeping {self.source}: {e}")
                return False
        self._switch(doc, source, revision)
        return True

    def _switch(self, doc: PolicyDocument, source: str, revision: int) -> None:
        if doc == self.document and revision == self.revision:
            return
        built: list[Listener] = []
        try:
            for listener in self._listeners:
                listener(doc)
                built.append(listener)
        except MeshError as e:
            for listener in built:  # back to the old document everywhere
                listener(self.document)
            self._refused(f"policy from {source} cannot be applied here, keeping {self.source}: {e}")
            return
        self.document, self.revision, self.source = doc, revision, source
        log.info("policy now from %s: %s", source, doc.to_dict())

    def _refused(self, message: str) -> None:
        log.error("%s", message)
        if self._on_error is not None:
            self._on_error()

    async def load(self, store: KVStore, key: bytes) -> int:
        """Reads the key once and applies it; returns the store revision read at."""
        page = await store.list(key, limit=1)
        kv = next((kv for kv in page.items if kv.key == key), None)
        self._apply_raw(kv.value if kv else None, kv.mod_revision if kv else 0)
        return page.revision

    async def follow(self, store: KVStore, key: bytes, from_revision: int) -> None:
        """Watches the key from ``from_revision`` + 1, applying each change; runs
        until cancelled (a compacted watch re-reads the key)."""
        revision = from_revision
        while True:
            try:
                async for ev in store.watch(key, start_revision=revision + 1):
                    revision = ev.revision
                    if ev.key == key:
                        self._apply_raw(ev.value if ev.kind == "put" else None, ev.revision)
            except WatchCompacted:
                while True:
                    try:
                        revision = await self.load(store, key)
                        break
                    except MeshError as e:
                        log.warning("re-reading the policy failed (will retry): %s", e)
                        await asyncio.sleep(1.0)

    def _apply_raw(self, value: bytes | None, revision: int) -> None:
        if value is None:
            self.apply(None, 0)
            return
        try:
            record = rec.decode(rec.PolicyRecord, value)
        except MeshError as e:
            self._refused(f"the stored policy (revision {revision}) does not decode, keeping {self.source}: {e}")
            return
        self.apply(record, revision)
