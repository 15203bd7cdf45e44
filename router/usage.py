"""What the copy keys charge each instance, kept up to date from the mirror's events.

Placement needs, per instance, the bytes and the number of models its copy keys
claim (a LOADING claim carries its predicted size before the instance record
shows it), and the mean size of the loaded copies (the guess for a model never
measured). Walking every copy of every model on each miss costs O(copies); this
keeps the sums as the mirror applies each copy event. When the mirror reloads
(after a compacted watch) it replaces its copy table without per-key events: the
sums are then rebuilt from it on the next read.
"""

from __future__ import annotations

from typing import Any

from mesh.registry import records as rec
from mesh.registry.keys import ParsedKey
from mesh.registry.mirror import RegistryMirror


class CopyUsage:
    def __init__(self, mirror: RegistryMirror) -> None:
        self._mirror = mirror
        self._source: object = None
        #: (model id, instance id) -> size the copy key charges.
        self._sizes: dict[tuple[str, str], int] = {}
        self._used: dict[str, int] = {}
        self._count: dict[str, int] = {}
        self._sized_total = 0
        self._sized_n = 0
        mirror.subscribe(self._on_change)

    def _rebuild(self) -> None:
        self._sizes.clear()
        self._used.clear()
        self._count.clear()
        self._sized_total = self._sized_n = 0
        self._source = self._mirror.copies
        for model_id, copies in self._mirror.copies.items():
            for instance_id, c in copies.items():
                self._add(model_id, instance_id, c.size_bytes)

    def _fresh(self) -> None:
        if self._source is not self._mirror.copies:
            self._rebuild()

    def _add(self, model_id: str, instance_id: str, size: int) -> None:
        self._sizes[(model_id, instance_id)] = size
        self._used[instance_id] = self._used.get(instance_id, 0) + size
        self._count[instance_id] = self._count.get(instance_id, 0) + 1
        if size:
            self._sized_total += size
            self._sized_n += 1

    def _remove(self, model_id: str, instance_id: str) -> None:
        size = self._sizes.pop((model_id, instance_id), None)
        if size is None:
            return
        self._used[instance_id] -= size
        self._count[instance_id] -= 1
        if not self._count[instance_id]:
            del self._used[instance_id], self._count[instance_id]
        if size:
            self._sized_total -= size
            self._sized_n -= 1

    def _on_change(self, key: ParsedKey, record: Any) -> None:
        if key.kind != "copy" or self._source is not self._mirror.copies:
            return  # not a copy, or the sums are rebuilt on the next read anyway
        self._remove(key.name, key.instance_id)
        if isinstance(record, rec.CopyRecord):  # None: deleted (or a corrupt value, which the mirror drops)
            self._add(key.name, key.instance_id, record.size_bytes)

    def of(self, instance_id: str) -> tuple[int, int]:
        """(bytes, models) the copy keys on ``instance_id`` charge it."""
        self._fresh()
        return self._used.get(instance_id, 0), self._count.get(instance_id, 0)

    def typical_size(self) -> int:
        """The mean size of the copies with a known size (at least 1 byte: a full
        instance never looks like it has room for a model of unknown size); 1 if none."""
        self._fresh()
        return max(1, self._sized_total // self._sized_n) if self._sized_n else 1
