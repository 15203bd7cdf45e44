"""The router's side of the policy document: placement and tunables, kept live.

The router's registry mirror already watches ``config/policy``; a mirror
listener hands each change to :class:`~mesh.policy.live.LivePolicy`, which
validates it (an invalid stored document is refused and the old one stays),
and :class:`RouterPolicy` rebuilds the placement function. Router tunables the
document may set (``router.scale_up_rpm``, ``idle_copy_s``, ``max_load_failures``,
``failure_ttl_s``) reach the components through :func:`tuned`, a view of the
settings that asks the document first.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from mesh.errors import InvalidArgument
from mesh.policy.document import PolicyDocument, RouterTunables, placement_policy
from mesh.policy.live import LivePolicy
from mesh.policy.placement import PlacementPolicy, rank
from mesh.policy.view import ClusterView, ModelView
from mesh.registry.keys import ParsedKey
from mesh.registry.mirror import RegistryMirror
from router.settings import RouterSettings

log = logging.getLogger(__name__)

TUNABLES = frozenset(RouterTunables.model_fields)


class RouterPolicy:
    def __init__(self, settings: RouterSettings, on_error: Any = None) -> None:
        """Reads ``--policy-file`` (InvalidArgument if it is bad)."""
        self.live = LivePolicy(settings.policy_file, on_error=on_error)
        self._placement: PlacementPolicy = rank
        self._default_placement = True
        self.live.subscribe(self._build)

    def _build(self, doc: PolicyDocument) -> None:
        try:
            self._placement = placement_policy(doc.placement)
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        self._default_placement = doc.placement.policy == "rank"

    def is_default_placement(self) -> bool:
        """The default ranking is in effect (its near-ties may be broken at random)."""
        return self._default_placement

    def placement(self, view: ClusterView, model: ModelView) -> list[str]:
        """The placement policy in effect (a PlacementPolicy). A user policy that
        raises is logged and the default ranking decides instead."""
        policy = self._placement
        try:
            return list(policy(view, model))
        except Exception:  # noqa: BLE001 - a user's policy must not fail requests
            if policy is rank:
                raise
            log.exception("placement policy %s failed for model %s; using rank", self.live.document.placement.policy,
                          model.model_id)
            return rank(view, model)

    def follow(self, mirror: RegistryMirror) -> None:
        """Applies what the mirror holds now and every change to ``config/policy``."""
        self.live.apply(mirror.policy, mirror.policy_revision)

        def changed(parsed: ParsedKey, record: Any) -> None:
            if parsed.kind == "policy":
                self.live.apply(record, mirror.policy_revision)

        mirror.subscribe(changed)


class _Tuned:
    def __init__(self, settings: RouterSettings, live: LivePolicy) -> None:
        self._settings = settings
        self._live = live

    def __getattr__(self, name: str) -> Any:
        default = getattr(self._settings, name)
        return self._live.tunable(name, default) if name in TUNABLES else default


def tuned(settings: RouterSettings, live: LivePolicy) -> RouterSettings:
    """``settings`` whose tunables come from the live document when it sets them."""
    return cast(RouterSettings, _Tuned(settings, live))
