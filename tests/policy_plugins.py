"""User policies for tests (imported by path, as an operator's own module would be)."""

from __future__ import annotations

from typing import Any


def explode(cluster_view: Any, model_view: Any, **params: Any) -> list[str]:
    """A placement policy with a bug: it always raises."""
    raise RuntimeError("user placement policy bug")
