"""The applied KServe resources as parsed objects, kept current from the registry mirror.

Placement reads :meth:`ResourceIndex.runtimes` on every miss, so the index is
rebuilt when a resource key changes, not per call.
"""

from __future__ import annotations

import logging
from typing import Any

from mesh.errors import InvalidArgument
from mesh.kserve.placement import runtime_index
from mesh.kserve.resources import INFERENCE_SERVICE, InferenceService, Resource, ServingRuntime, parse_resource
from mesh.registry.keys import ParsedKey
from mesh.registry.mirror import RegistryMirror

log = logging.getLogger(__name__)


class ResourceIndex:
    def __init__(self, mirror: RegistryMirror) -> None:
        self._mirror = mirror
        self._runtimes: dict[str, ServingRuntime] | None = None
        mirror.subscribe(self._changed)

    def _changed(self, parsed: ParsedKey, record: Any) -> None:
        if parsed.kind == "resource":
            self._runtimes = None

    def parsed(self, kind: str, name: str) -> Resource | None:
        record = self._mirror.resources.get((kind, name))
        if record is None:
            return None
        try:
            return parse_resource(record.manifest)
        except InvalidArgument as e:  # stored by an older build with other rules
            log.error("stored %s %s no longer parses, ignored: %s", kind, name, e)
            return None

    def inference_service(self, name: str) -> InferenceService | None:
        r = self.parsed(INFERENCE_SERVICE, name)
        return r if isinstance(r, InferenceService) else None

    def runtimes(self) -> dict[str, ServingRuntime]:
        """ServingRuntimes and ClusterServingRuntimes by name (the namespaced one wins)."""
        if self._runtimes is None:
            found = [self.parsed(kind, name) for kind, name in list(self._mirror.resources)
                     if kind != INFERENCE_SERVICE]
            self._runtimes = runtime_index(r for r in found if isinstance(r, ServingRuntime))
        return self._runtimes
