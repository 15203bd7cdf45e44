"""Weighted traffic splits of a vmodel (canary, blue-green): which target a request gets.

A split is ``{model id: weight}``. Each request draws a point in [0, total weight)
and takes the target whose cumulative range holds it. The draw comes from a
seeded generator (``split_seed``, so tests and replays are reproducible), or,
when the caller sends ``mm-split-key``, from a hash of that key and the vmodel
id, so one caller (a user id, a session) always reaches the same target while
the weights stay the same.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping

from mesh.errors import InvalidArgument

SPLIT_KEY_HEADER = "mm-split-key"
#: More targets than this is a mistake, not a rollout.
MAX_TARGETS = 16


def choose(split: Mapping[str, int], point: float) -> str:
    """The target whose share of the cumulative weight holds ``point`` (0 <= point < 1)."""
    items = sorted((m, w) for m, w in split.items() if w > 0)
    total = sum(w for _, w in items)
    at = point * total
    for model_id, weight in items:
        if at < weight:
            return model_id
        at -= weight
    return items[-1][0]


def sticky_point(vmodel_id: str, key: str) -> float:
    """A uniform point in [0, 1) fixed by (vmodel, key)."""
    digest = hashlib.blake2b(f"{vmodel_id}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def validate_split(targets: Mapping[str, int]) -> dict[str, int]:
    if not targets:
        raise InvalidArgument("a traffic split needs at least one target (MODEL=WEIGHT)")
    if len(targets) > MAX_TARGETS:
        raise InvalidArgument(f"a traffic split has at most {MAX_TARGETS} targets, got {len(targets)}")
    if any(w < 0 for w in targets.values()):
        raise InvalidArgument("traffic split weights must be >= 0")
    if sum(targets.values()) <= 0:
        raise InvalidArgument("traffic split weights add up to 0: give at least one target a positive weight")
    return dict(targets)


class SplitChooser:
    """Draws per request: seeded, or sticky by key."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def pick(self, vmodel_id: str, split: Mapping[str, int], key: str | None) -> str:
        return choose(split, sticky_point(vmodel_id, key) if key else self._rng.random())
