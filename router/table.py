"""The routing table: the registry mirror, seen the way the hot path needs it.

No etcd read happens here: everything comes from the watch-fed mirror. The table
also counts outstanding requests per copy (the least-loaded copy wins) and lets
loaders wait for a model's copies to change.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Callable
from typing import Any, TypeVar

from mesh.clock import Clock
from mesh.errors import ModelNotFound
from mesh.registry import records as rec
from mesh.registry.keys import ParsedKey
from mesh.registry.mirror import RegistryMirror
from router.splits import SplitChooser
from router.usage import CopyUsage

T = TypeVar("T")


class RoutingTable:
    def __init__(self, mirror: RegistryMirror, clock: Clock, suspect_s: float = 5.0,
                 splits: SplitChooser | None = None) -> None:
        self.mirror = mirror
        #: What the copy keys charge each instance (placement), kept from the mirror's events.
        self.usage = CopyUsage(mirror)
        self._splits = splits or SplitChooser()
        #: Called with (vmodel id, model id) for each request a split routes (metrics).
        self.on_split: Callable[[str, str], None] | None = None
        self._clock = clock
        self._suspect_s = suspect_s
        #: instance id, or (model id, instance id) -> monotonic time the suspicion ends.
        self._suspects: dict[object, float] = {}
        self._outstanding: dict[tuple[str, str], int] = defaultdict(int)
        self._copy_events: dict[str, asyncio.Event] = {}
        mirror.subscribe(self._on_change)

    def _on_change(self, key: ParsedKey, record: Any) -> None:
        if key.kind in ("copy", "model"):
            ev = self._copy_events.pop(key.name, None)
            if ev:
                ev.set()
        elif key.kind == "instance" and record is None:
            # An instance vanished: its copies go with its lease; wake everyone.
            for ev in self._copy_events.values():
                ev.set()
            self._copy_events.clear()

    async def wait_for_change(self, model_id: str, timeout_s: float) -> None:
        """Returns when the model's record or copies change, or after the timeout."""
        ev = self._copy_events.setdefault(model_id, asyncio.Event())
        try:
            async with asyncio.timeout(max(0.0, timeout_s)):
                await ev.wait()
        except TimeoutError:
            pass

    def drained(self, instance_id: str) -> bool:
        """Drained through MeshAdmin (any router): no new loads there."""
        return instance_id in self.mirror.drains

    # -- names ----------------------------------------------------------------

    def resolve(self, name: str, *, vmodel_first: bool, split_key: str | None = None, count: bool = False) -> str:
        """Concrete model id for a request naming ``name`` (a split vmodel draws its target;
        ``count``: this is the request's routing decision, report it to ``on_split``)."""
        m = self.mirror
        if vmodel_first:
            v = m.vmodels.get(name)
            if v is not None:
                return self._target(v, split_key, count)
            if name in m.models:
                return name
            raise ModelNotFound(f"no model or vmodel named {name!r} is registered")
        if name in m.models:
            return name
        raise ModelNotFound(f"model {name!r} is not registered")

    async def refresh(self, name: str) -> None:
        """Reads the model and vmodel ``name`` (and a vmodel's targets) from the registry
        into the mirror: before a "not registered" answer, in case another router
        registered it a moment ago (read-your-writes across routers)."""
        m, keys = self.mirror, self.mirror.keys
        await m.refresh(keys.model(name), keys.vmodel(name))
        v = m.vmodels.get(name)
        if v is not None:
            targets = {v.active_model, v.target_model, *v.split} - {""} - m.models.keys()
            if targets:
                await m.refresh(*(keys.model(t) for t in sorted(targets)))

    async def caught_up(self, name: str, lookup: Callable[[], T]) -> T:
        """``lookup()``; on ModelNotFound, once more after ``refresh(name)``."""
        try:
            return lookup()
        except ModelNotFound:
            await self.refresh(name)
            return lookup()

    def resolve_vmodel(self, name: str, split_key: str | None = None, count: bool = False) -> str:
        v = self.mirror.vmodels.get(name)
        if v is None:
            raise ModelNotFound(f"vmodel {name!r} is not defined")
        return self._target(v, split_key, count)

    def _target(self, v: rec.VModelRecord, split_key: str | None, count: bool) -> str:
        if not v.split:
            return v.active_model
        model_id = self._splits.pick(v.vmodel_id, v.split, split_key)
        if count and self.on_split is not None:
            self.on_split(v.vmodel_id, model_id)
        return model_id

    # -- suspicion: a runtime that failed a call, a copy that vanished -------

    def suspect(self, instance_id: str, model_id: str | None = None) -> None:
        """Avoid an instance (or one copy) for a few seconds, until the mirror catches up."""
        key: object = (model_id, instance_id) if model_id else instance_id
        self._suspects[key] = self._clock.monotonic() + self._suspect_s
        if model_id:
            ev = self._copy_events.pop(model_id, None)
            if ev:
                ev.set()

    def is_suspect(self, instance_id: str, model_id: str | None = None) -> bool:
        if not self._suspects:
            return False
        now = self._clock.monotonic()
        for key in (instance_id, (model_id, instance_id)):
            until = self._suspects.get(key)
            if until is not None:
                if until > now:
                    return True
                del self._suspects[key]
        return False

    # -- copies ------------------------------------------------------------

    def copies(self, model_id: str) -> dict[str, rec.CopyRecord]:
        return self.mirror.copies.get(model_id, {})

    def loaded_on(self, model_id: str, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
        insts = self.mirror.instances
        usable = [
            i for i, c in self.copies(model_id).items()
            if c.state == rec.LOADED and i in insts and i not in exclude and not self.is_suspect(i, model_id)
        ]
        # A shutting-down runtime still serves what it holds until it leaves.
        return [i for i in usable if not insts[i].shutting_down] or usable

    def pick(self, model_id: str, exclude: set[str] | frozenset[str] = frozenset()) -> str | None:
        """The loaded copy with the fewest outstanding requests (random among ties)."""
        candidates = self.loaded_on(model_id, exclude)
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        out = self._outstanding
        best = min(out[(model_id, i)] for i in candidates)
        return random.choice([i for i in candidates if out[(model_id, i)] == best])

    def begin(self, model_id: str, instance_id: str) -> None:
        self._outstanding[(model_id, instance_id)] += 1

    def end(self, model_id: str, instance_id: str) -> None:
        k = (model_id, instance_id)
        self._outstanding[k] -= 1
        if self._outstanding[k] <= 0:
            del self._outstanding[k]

    def endpoint(self, instance_id: str) -> str | None:
        inst = self.mirror.instances.get(instance_id)
        return inst.endpoint if inst else None

    def vmodels_referring_to(self, model_id: str) -> list[str]:
        return sorted(
            v.vmodel_id for v in self.mirror.vmodels.values()
            if model_id in (v.active_model, v.target_model) or model_id in v.split or model_id in v.pending_split
        )
