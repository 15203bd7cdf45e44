"""The registry's key layout (DESIGN.md, "The registry")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["model", "vmodel", "instance", "copy", "policy", "leader", "drain", "resource"]


@dataclass(frozen=True, slots=True)
class ParsedKey:
    kind: Kind
    #: model id, vmodel id or instance id; for copies the model id.
    name: str
    #: For copies, the instance id; for resources, the resource name (``name`` is its kind).
    instance_id: str = ""


class KeySchema:
    """Builds and parses keys under ``<root>/<mesh>/``."""

    def __init__(self, mesh: str = "default", root: str = "/meshserve") -> None:
        self.prefix = f"{root.rstrip('/')}/{mesh}/"
        self.root = self.prefix.encode()
        self.models = self.root + b"models/"
        self.vmodels = self.root + b"vmodels/"
        self.instances = self.root + b"instances/"
        self.copies = self.root + b"copies/"
        self.drains = self.root + b"drains/"
        self.policy = self.root + b"config/policy"
        self.leader = self.root + b"leader"
        #: KServe resources applied to the mesh: ``resources/<kind>/<name>``.
        self.resources = self.root + b"resources/"

    def model(self, model_id: str) -> bytes:
        return self.models + model_id.encode()

    def vmodel(self, vmodel_id: str) -> bytes:
        return self.vmodels + vmodel_id.encode()

    def instance(self, instance_id: str) -> bytes:
        return self.instances + instance_id.encode()

    def copy(self, model_id: str, instance_id: str) -> bytes:
        return self.copies + f"{model_id}/{instance_id}".encode()

    def drain(self, instance_id: str) -> bytes:
        return self.drains + instance_id.encode()

    def resource(self, kind: str, name: str) -> bytes:
        return self.resources + f"{kind}/{name}".encode()

    def resources_of(self, kind: str) -> bytes:
        return self.resources + f"{kind}/".encode()

    def copies_of(self, model_id: str) -> bytes:
        return self.copies + f"{model_id}/".encode()

    def parse(self, key: bytes) -> ParsedKey | None:
        """What a key under this schema names; None for foreign keys."""
        if not key.startswith(self.root):
            return None
        if key.startswith(self.models):
            return ParsedKey("model", key[len(self.models):].decode())
        if key.startswith(self.vmodels):
            return ParsedKey("vmodel", key[len(self.vmodels):].decode())
        if key.startswith(self.instances):
            return ParsedKey("instance", key[len(self.instances):].decode())
        if key.startswith(self.copies):
            # Model ids may hold '/', instance ids never do: split on the last one.
            model_id, _, instance_id = key[len(self.copies):].decode().rpartition("/")
            return ParsedKey("copy", model_id, instance_id) if model_id else None
        if key.startswith(self.resources):
            kind, _, name = key[len(self.resources):].decode().partition("/")
            return ParsedKey("resource", kind, name) if kind and name else None
        if key.startswith(self.drains):
            return ParsedKey("drain", key[len(self.drains):].decode())
        if key == self.policy:
            return ParsedKey("policy", "policy")
        if key == self.leader:
            return ParsedKey("leader", "leader")
        return None
