"""What the model manager reports to (the registration) and how it reads model keys."""

from __future__ import annotations

import json
from typing import Any, Protocol


class LoadListener(Protocol):
    def loading(self, model_id: str) -> None: ...

    def loaded(self, model_id: str, size_bytes: int) -> None: ...

    def removed(self, model_id: str) -> None: ...

    def changed(self) -> None:
        """Counts, sizes or LRU times changed (the instance record is stale)."""
        ...


def parse_key(model_id: str, key: str) -> dict[str, Any]:
    """The model key as a dict. ModelMesh keys are opaque, usually JSON; a key that
    is not a JSON object is kept as ``{"key": <text>}``."""
    if not key.strip():
        return {}
    try:
        data = json.loads(key)
    except ValueError:
        return {"key": key}
    return data if isinstance(data, dict) else {"key": key}
