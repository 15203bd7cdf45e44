"""The policy document: eviction and placement, validated, as one JSON/YAML object.

    eviction:
      default: {policy: lru}                 # every runtime no by_label rule matches
      by_label:
        "device=gpu": {policy: gdsf, min_age_s: 60}
    placement: {policy: spread, zones: true, require_by_type: {pytorch: {device: gpu}}}
    router: {scale_up_rpm: 2000, idle_copy_s: 300, max_load_failures: 3}

Stored at the registry key ``config/policy`` (``meshserve policy set``,
MeshAdmin SetPolicy) or read from ``--policy-file``; README "Policies" documents
every field. :func:`validate_document` refuses a bad one with
:class:`~mesh.errors.InvalidArgument` naming each field and the reason.
:func:`eviction_policy` and :func:`placement_policy` turn specs into the pure
functions of :mod:`mesh.policy.eviction` and :mod:`mesh.policy.placement`; a
user policy is named by import path (``"package.module:function"``), resolved
when the document is validated.
"""

from __future__ import annotations

import functools
import importlib
import json
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from mesh.errors import InvalidArgument
from mesh.policy import eviction as ev
from mesh.policy import placement as pl
from mesh.policy.adaptive import Adaptive, AdaptiveState

IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
EVICTION_NAMES = ("lru", "lfu", "gdsf", "ttl", "adaptive")
PLACEMENT_NAMES = ("rank", "spread", "pack")
_SELECTOR = re.compile(r"^[A-Za-z0-9._/-]{1,63}=[A-Za-z0-9._/-]{0,63}$")


def load_callable(path: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function (ValueError with the reason)."""
    if not IMPORT_PATH.match(path):
        raise ValueError(f"{path!r} is neither a built-in policy nor an import path 'package.module:function'")
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's to see
        raise ValueError(f"cannot import {module_name!r} for policy {path!r}: {type(e).__name__}: {e}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"{module_name!r} has no callable {attr!r}")
    return fn  # type: ignore[no-any-return]


def _importable(path: str) -> str:
    load_callable(path)
    return path


#: A user policy's ``package.module:function``, imported when the document is validated.
ImportPath = Annotated[str, AfterValidator(_importable)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _spec_from_name(value: Any) -> Any:
    """A bare name stands for ``{"policy": name}``."""
    return {"policy": value} if isinstance(value, str) else value


def _tagger(builtins: tuple[str, ...]) -> Callable[[Any], str | None]:
    def tag(value: Any) -> str | None:
        name = value.get("policy") if isinstance(value, dict) else getattr(value, "policy", None)
        if name in builtins:
            return str(name)
        return "custom" if isinstance(name, str) and ":" in name else None

    return tag


# -- eviction -----------------------------------------------------------------


class _EvictionBase(_Strict):
    #: Churn guard: when the router says the whole mesh is full (no eligible
    #: runtime had room), models loaded less than this many seconds ago are not
    #: evicted; the load is refused instead (RESOURCE_EXHAUSTED). 0: off.
    min_age_s: float = Field(0.0, ge=0)


class LruSpec(_EvictionBase):
    policy: Literal["lru"] = "lru"


class LfuSpec(_EvictionBase):
    policy: Literal["lfu"]
    #: Halve an idle model's use count every this many seconds (0: counts do not decay).
    half_life_s: float = Field(0.0, ge=0)


class GdsfSpec(_EvictionBase):
    policy: Literal["gdsf"]
    #: A reload's cost: the measured load seconds, or 1 for every model.
    cost: Literal["load_seconds", "one"] = "load_seconds"


class TtlSpec(_EvictionBase):
    policy: Literal["ttl"]
    #: Unload a model unused this many seconds, even when there is room.
    idle_s: float = Field(300.0, gt=0)
    #: How often to look for idle models (default: idle_s / 4, at most 10 s).
    sweep_s: float | None = Field(None, gt=0)


class AdaptiveSpec(_EvictionBase):
    policy: Literal["adaptive"]
    #: The window's share of the capacity at the frequency end (newcomers on probation).
    window: float = Field(0.01, ge=0, le=0.8)
    #: The window's share at the recency end of the climber (>= window; unset: max(window, 0.05)).
    max_window: float | None = Field(None, ge=0, le=0.8)
    #: Hill-climb memory and window on the hit ratio (false: keep the frequency end).
    climb: bool = True
    #: The sketch's longest memory: it halves its counts every this many requests
    #: per loaded model (the climber may shorten it down to a sixty-fourth).
    sample_factor: int = Field(128, ge=1, le=1000)
    #: Counters per sketch row (4 rows, 1 byte each); a power of two, >= 4x the
    #: models a runtime holds at once for few collisions.
    sketch_width: int = Field(16384, ge=16, le=2**22)
    #: A reload's cost: the measured load seconds, or 1 for every model.
    cost: Literal["load_seconds", "one"] = "load_seconds"

    @field_validator("sketch_width")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"sketch_width must be a power of two, got {v}")
        return v

    @model_validator(mode="after")
    def _window_range(self) -> AdaptiveSpec:
        if self.max_window is not None and self.max_window < self.window:
            raise ValueError(f"max_window ({self.max_window:g}) must be at least window ({self.window:g})")
        return self


class CustomEvictionSpec(_EvictionBase):
    #: ``package.module:function``, called as ``function(view, needed, **params)``.
    policy: ImportPath
    params: dict[str, Any] = {}


EvictionSpec = Annotated[
    Annotated[LruSpec, Tag("lru")] | Annotated[LfuSpec, Tag("lfu")] | Annotated[GdsfSpec, Tag("gdsf")]
    | Annotated[TtlSpec, Tag("ttl")] | Annotated[AdaptiveSpec, Tag("adaptive")]
    | Annotated[CustomEvictionSpec, Tag("custom")],
    Discriminator(_tagger(EVICTION_NAMES), custom_error_type="unknown_policy",
                  custom_error_message="policy must be lru, lfu, gdsf, ttl, adaptive or an import path "
                  "'package.module:function'"),
    BeforeValidator(_spec_from_name),
]


def parse_selector(selector: str) -> dict[str, str]:
    """``"k=v,k2=v2"`` -> {"k": "v", "k2": "v2"} (ValueError naming the bad part)."""
    parts = [p.strip() for p in selector.split(",")]
    bad = [p for p in parts if not _SELECTOR.match(p)]
    if bad or not parts:
        raise ValueError(f"label selector {selector!r}: {', '.join(repr(b) for b in bad) or 'empty'} "
                         "is not key=value (letters, digits, '.', '_', '/', '-')")
    return dict(p.split("=", 1) for p in parts)


class EvictionSection(_Strict):
    #: The policy of every runtime no ``by_label`` rule matches. Unset: the
    #: runtime's own ``MESHSERVE_EVICTION_POLICY`` / ``--eviction-policy`` (lru).
    default: EvictionSpec | None = None
    #: ``"k=v[,k2=v2]"`` -> policy for runtimes carrying all those labels; the
    #: first matching rule (document order) wins.
    by_label: dict[str, EvictionSpec] = {}

    @field_validator("by_label")
    @classmethod
    def _selectors(cls, v: dict[str, Any]) -> dict[str, Any]:
        for selector in v:
            parse_selector(selector)
        return v


# -- placement ----------------------------------------------------------------


class _PlacementBase(_Strict):
    #: Model type -> runtime labels a model of that type needs, e.g.
    #: ``{"pytorch": {"device": "gpu"}}`` (a model's ``require.*`` labels win).
    require_by_type: dict[str, dict[str, str]] = {}


class RankSpec(_PlacementBase):
    policy: Literal["rank"] = "rank"


class SpreadSpec(_PlacementBase):
    policy: Literal["spread"]
    #: Prefer zones that hold no copy of the model yet.
    zones: bool = True


class PackSpec(_PlacementBase):
    policy: Literal["pack"]
    #: Fraction of an instance's capacity packing keeps free (0 <= headroom < 1).
    headroom: float = Field(0.0, ge=0, lt=1)


class CustomPlacementSpec(_PlacementBase):
    #: ``package.module:function``, called as ``function(cluster_view, model_view, **params)``.
    policy: ImportPath
    params: dict[str, Any] = {}


PlacementSpec = Annotated[
    Annotated[RankSpec, Tag("rank")] | Annotated[SpreadSpec, Tag("spread")] | Annotated[PackSpec, Tag("pack")]
    | Annotated[CustomPlacementSpec, Tag("custom")],
    Discriminator(_tagger(PLACEMENT_NAMES), custom_error_type="unknown_policy",
                  custom_error_message="policy must be rank, spread, pack or an import path 'package.module:function'"),
    BeforeValidator(_spec_from_name),
]


class RouterTunables(_Strict):
    """Router settings the document may override live (unset: the router's flags/env)."""

    #: Another copy when requests/min per copy exceed this (MESHSERVE_SCALE_UP_RPM).
    scale_up_rpm: int | None = Field(None, gt=0)
    #: Extra copies unused this long are released (MESHSERVE_IDLE_COPY_S).
    idle_copy_s: float | None = Field(None, gt=0)
    #: Recent failures after which a model is LOADING_FAILED (MESHSERVE_MAX_LOAD_FAILURES).
    max_load_failures: int | None = Field(None, ge=1)
    #: How long a failed load is remembered (MESHSERVE_FAILURE_TTL_S).
    failure_ttl_s: float | None = Field(None, gt=0)


def _section_from_spec(value: Any) -> Any:
    """``eviction: lfu`` or ``eviction: {policy: ...}`` stands for ``{default: ...}``."""
    if isinstance(value, str) or (isinstance(value, dict) and "policy" in value):
        return {"default": value}
    return value


class PolicyDocument(_Strict):
    #: How runtimes choose models to unload.
    eviction: Annotated[EvictionSection, BeforeValidator(_section_from_spec)] = Field(default_factory=EvictionSection)
    #: How routers choose the runtime that loads a model.
    placement: PlacementSpec = Field(default_factory=RankSpec)
    #: Router settings overridden live.
    router: RouterTunables = Field(default_factory=lambda: RouterTunables.model_validate({}))

    def eviction_for(self, labels: Mapping[str, str], fallback: Any = None) -> Any:
        """The eviction spec of a runtime with these labels."""
        for selector, spec in self.eviction.by_label.items():
            if all(labels.get(k) == v for k, v in parse_selector(selector).items()):
                return spec
        return self.eviction.default or fallback or LruSpec.model_validate({})

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


# -- parsing and validating -----------------------------------------------------


def _where(loc: tuple[Any, ...]) -> str:
    tags = {"custom", *EVICTION_NAMES, *PLACEMENT_NAMES, "function-before[_spec_from_name(), tagged-union[...]]"}
    return ".".join(str(p) for p in loc if p not in tags or isinstance(p, int)) or "document"


def validate_document(data: Any) -> PolicyDocument:
    """A parsed document -> PolicyDocument; InvalidArgument names every bad field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidArgument(f"policy document must be an object, got {type(data).__name__}")
    try:
        return PolicyDocument.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{_where(err['loc'])}: {err['msg'].removeprefix('Value error, ')}"
                             for err in e.errors())
        raise InvalidArgument(f"invalid policy document: {problems}") from None


def parse_document(text: str | bytes, *, source: str = "policy document") -> PolicyDocument:
    """JSON or YAML text -> PolicyDocument (InvalidArgument on bad syntax or fields)."""
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as e:
        raise InvalidArgument(f"{source} is neither JSON nor YAML: {e}") from None
    return validate_document(data)


def load_file(path: str) -> PolicyDocument:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise InvalidArgument(f"cannot read policy file {path}: {e.strerror}") from None
    return parse_document(text, source=f"policy file {path}")


def dumps(doc: PolicyDocument) -> str:
    return json.dumps(doc.to_dict(), sort_keys=True)


# -- building the policies --------------------------------------------------------


def _custom_victims(fn: Callable[..., Any], params: dict[str, Any]) -> ev.VictimFn:
    def victims(view: ev.CacheView, needed: int) -> ev.Eviction | None:
        out = fn(view, needed, **params)
        if out is None or isinstance(out, ev.Eviction):
            return out
        return ev.Eviction(list(out), view.aging)

    return victims


def eviction_policy(spec: Any) -> ev.EvictionPolicy:
    """An eviction spec -> the policy the runtime's cache applies."""
    params = spec.model_dump(exclude={"policy", "min_age_s"})
    if isinstance(spec, LfuSpec):
        return ev.EvictionPolicy("lfu", ev.Lfu(spec.half_life_s), min_age_s=spec.min_age_s, params=params)
    if isinstance(spec, GdsfSpec):
        return ev.EvictionPolicy("gdsf", ev.Gdsf(spec.cost), min_age_s=spec.min_age_s, params=params)
    if isinstance(spec, TtlSpec):
        ttl = ev.Ttl(spec.idle_s, spec.sweep_s)
        return ev.EvictionPolicy("ttl", ttl, expired=ttl.expired, sweep_interval_s=ttl.sweep_interval_s,
                                 min_age_s=spec.min_age_s, params=params)
    if isinstance(spec, AdaptiveSpec):
        top = spec.max_window if spec.max_window is not None else max(spec.window, 0.05)
        state = functools.partial(AdaptiveState, window=spec.window, max_window=top,
                                  sample_factor=spec.sample_factor, sketch_width=spec.sketch_width, climb=spec.climb)
        return ev.EvictionPolicy("adaptive", Adaptive(spec.cost), min_age_s=spec.min_age_s, params=params,
                                 new_state=state)
    if isinstance(spec, CustomEvictionSpec):
        victims = _custom_victims(load_callable(spec.policy), spec.params)
        return ev.EvictionPolicy(spec.policy, victims, min_age_s=spec.min_age_s, params=params)
    return ev.EvictionPolicy("lru", ev.lru, min_age_s=spec.min_age_s, params=params)


def placement_policy(spec: Any) -> pl.PlacementPolicy:
    """A placement spec -> ``(ClusterView, ModelView) -> [instance ids]``."""
    policy: pl.PlacementPolicy
    if isinstance(spec, SpreadSpec):
        policy = functools.partial(pl.spread, zones=spec.zones)
    elif isinstance(spec, PackSpec):
        policy = functools.partial(pl.pack, headroom=spec.headroom)
    elif isinstance(spec, CustomPlacementSpec):
        fn = load_callable(spec.policy)
        policy = functools.partial(fn, **spec.params) if spec.params else fn
    else:
        policy = pl.rank
    return pl.with_type_constraints(policy, spec.require_by_type)


def eviction_setting(value: Any) -> Any:
    """``MESHSERVE_EVICTION_POLICY``: a name (``lru``, ``lfu``, ``gdsf``, ``ttl``, ``adaptive``,
    ``package.module:function``) or a JSON spec -> an eviction spec (ValueError)."""
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise ValueError(f"eviction policy JSON does not parse: {e}") from None
    try:
        return EvictionSection.model_validate({"default": value}).default
    except ValidationError as e:
        raise ValueError("; ".join(
            (f"{_where(err['loc'][1:])}: " if _where(err['loc'][1:]) != "document" else "")
            + err['msg'].removeprefix('Value error, ') for err in e.errors())) from None
