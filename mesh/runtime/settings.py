"""Settings of one runtime process (``meshserve runtime``), built once at start.

Every field is a flag of ``meshserve runtime`` and a ``MESHSERVE_<NAME>`` variable
(e.g. ``MESHSERVE_CAPACITY=8Gi``, ``MESHSERVE_LABELS=gpu=h100,team=a``).
"""

from __future__ import annotations

import re
import socket
import uuid
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, field_validator
from pydantic_settings import NoDecode

from mesh.policy.document import eviction_setting
from mesh.settings import ByteSize, CommonSettings, OptionalByteSize, check_host_port

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
_LABEL = re.compile(r"^[A-Za-z0-9._/-]{1,63}$")


def parse_labels(value: Any) -> dict[str, str]:
    """``{"k": "v"}`` or ``"k=v,k2=v2"`` (empty string: no labels)."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        items = [(str(k), str(v)) for k, v in value.items()]
    else:
        items = []
        for part in str(value).split(","):
            k, sep, v = part.strip().partition("=")
            if not sep:
                raise ValueError(f"invalid label {part.strip()!r}: expected key=value, e.g. gpu=h100")
            items.append((k.strip(), v.strip()))
    for k, v in items:
        if not _LABEL.match(k) or (v and not _LABEL.match(v)):
            raise ValueError(f"invalid label {k}={v}: keys and values use letters, digits, '.', '_', '/', '-'")
    return dict(items)


def _default_instance_id() -> str:
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:40] or "runtime"
    return f"{host}-{uuid.uuid4().hex[:6]}"


Labels = Annotated[dict[str, str], NoDecode, BeforeValidator(parse_labels)]


def parse_list(value: Any) -> tuple[str, ...]:
    """``"a,b"`` or a list -> ("a", "b")."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(str(i).strip() for i in items if str(i).strip())


NameList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(parse_list)]
EvictionSetting = Annotated[Any, NoDecode, BeforeValidator(eviction_setting)]


class RuntimeSettings(CommonSettings):
    #: HOST:PORT the gRPC server binds (SPI, V2 inference, health, reflection on one
    #: port). Port 0 picks a free port; the ready line names the one bound.
    listen: str = "127.0.0.1:8085"
    #: HOST:PORT routers dial, written to the instance record. Default: the listen
    #: host (the machine's hostname when listening on 0.0.0.0 / ::) with the bound port.
    advertise: str = ""
    #: This runtime's id in the registry (``instances/<id>``, ``copies/<m>/<id>``).
    #: Default: hostname plus a short random suffix. Give a stable id (a StatefulSet
    #: pod name) to have a restarted pod clean up its predecessor's copy keys.
    instance_id: str = Field(default="", validate_default=True)
    #: Bytes of model memory this runtime may hold. Default: the device's memory
    #: (GPU total via torch for cuda, host RAM for cpu) minus ``capacity_reserve``.
    capacity: OptionalByteSize = None
    #: Kept back from a derived capacity for the process itself (interpreter,
    #: libraries, CUDA context, inference buffers). Ignored when ``capacity`` is set.
    capacity_reserve: ByteSize = 2 * 2**30
    #: Local folder for model files the fetcher downloads ("" = the fetcher's default).
    cache_dir: str = ""
    #: ModelMesh-format storage config (JSON: one object per storage key), handed to
    #: the fetcher; "" = none (local paths and file:// only).
    storage_config: str = ""
    #: HOST:PORT of the Prometheus /metrics endpoint; "" = no metrics server.
    metrics_listen: str = ""
    #: Where models run: ``cpu``, ``cuda`` (device 0) or ``cuda:N``.
    device: str = "cpu"
    #: Free-form labels placement policies match on (``k=v,k2=v2`` or a JSON object).
    labels: Labels = {}
    #: Failure zone (rack, availability zone) placement spreads copies over.
    zone: str = ""
    #: Model types this runtime loads (``onnx``, ``pytorch``, ``sklearn``, ``xgboost``,
    #: ``lightgbm``, installed plugins' names; any case, KServe's aliases), advertised
    #: in the instance record. Empty (the default): every built-in type and installed
    #: plugin whose library imports. Each library is imported at start (skops right
    #: after ready, in the background) so its cost is not charged to the first model:
    #: leaving ``pytorch`` out saves ~190 MB resident (unless ``sklearn`` is served:
    #: skops imports torch's array-API shim).
    model_types: NameList = ()
    #: Load pickle-based scikit-learn files (``.joblib``, ``.pkl``, ``.pickle``).
    #: Unpickling runs any code the file's author put in it, so it is off: turn it on
    #: only where every model source is trusted, or save models as ``.skops``.
    allow_pickle: bool = False
    #: Types skops may load beyond those it trusts by default, e.g.
    #: ``sklearn.tree._tree.Tree`` for tree ensembles (review each one: skops says why
    #: it does not trust them).
    skops_trusted_types: NameList = ()
    #: ``package.module:Class`` custom model types (CustomModel subclasses) this
    #: runtime may load; each is imported at start, and one that does not import stops it.
    custom_model_types: NameList = ()
    #: TTL of the instance's etcd lease: a killed runtime's keys vanish this long
    #: after its last refresh.
    lease_ttl_s: int = 10
    #: Loads (fetch + deserialise) running at once; more wait their turn.
    max_loading_concurrency: int = 2
    #: Threads running inference (session.run / forward). Each model's ORT session
    #: uses ``intra_op_threads`` inside one of these.
    inference_threads: int = 4
    #: A model whose measured inference takes less than this (moving estimate, in µs)
    #: runs inline on the event loop instead of in the inference pool (a thread hop
    #: costs more than a tiny model's run); 0 = always the pool (README "Inline inference").
    inline_inference_max_us: float = Field(default=200.0, ge=0)
    #: Intra-op threads per ORT session, and torch's thread count. 1 keeps a thousand sessions from
    #: owning a thousand thread pools; raise it for few, large models.
    intra_op_threads: int = 1
    #: ONNX files at least this large get ONNX Runtime's full graph optimisation (layout and
    #: extended fusions); smaller ones only the basic level, which builds the session about
    #: twice as fast and runs a small model as fast (README "Model churn"). 0 = always full.
    onnx_full_optimization_min_bytes: ByteSize = 1 << 20
    #: Load timeout = base + per_gb x predicted GB (a big model may take longer).
    load_timeout_base_s: float = 30.0
    load_timeout_per_gb_s: float = 60.0
    #: Predicted size = bytes on disk x this factor (ORT/torch hold a deserialised
    #: copy plus per-session buffers). Conservative, as the SPI asks.
    size_prediction_factor: float = 1.5
    #: Plus this fixed cost per model (session object, graph, kernel state): an ONNX
    #: Runtime CPU session of a 70 KB model holds ~165 KB resident (BENCHMARKS.md).
    size_overhead: ByteSize = 64 * 2**10
    #: Size reported when nothing better is known (a remote URI not fetched yet).
    default_model_size: ByteSize = 64 * 2**20
    #: Grace for in-flight requests on SIGTERM before the server closes.
    shutdown_grace_s: float = 10.0
    #: Instance-record updates are coalesced: at most one write per this interval.
    record_interval_s: float = 1.0
    #: Eviction policy when the policy document sets none for this runtime: ``lru``,
    #: ``lfu``, ``gdsf``, ``ttl``, ``adaptive``, ``package.module:function``, or a JSON spec such as
    #: ``{"policy": "ttl", "idle_s": 60}`` (README "Policies").
    eviction_policy: EvictionSetting = Field(default="lru", validate_default=True)
    #: A policy document (JSON or YAML) used while the registry's ``config/policy``
    #: key is unset; "" = none (built-in defaults).
    policy_file: str = ""
    #: Per-model metric labels (``meshserve_model_requests_total{model,code}``); off by
    #: default: thousands of models would mean thousands of series.
    metrics_per_model: bool = False
    #: Tokens (one a line, re-read on change) a caller of the ModelRuntime SPI must
    #: present (routers send theirs from ``runtime_token_file``); "" = no token check.
    spi_token_file: str = ""
    #: Under mTLS (``tls_client_ca``): certificate common names / SANs allowed to call
    #: the SPI (the routers'). With ``spi_token_file`` too, either suffices.
    spi_client_names: NameList = ()
    #: Folders local model paths (``/path``, ``file://``) must lie under, besides the
    #: model cache (``cache_dir``); a path outside is refused (``/etc/passwd``).
    #: ``/`` allows any local path. ``pvc://`` volumes resolve under the puller's pvc root.
    model_roots: NameList = ("/mnt/models",)

    @field_validator("listen", "advertise", "metrics_listen")
    @classmethod
    def _check_endpoint(cls, v: str, info: Any) -> str:
        return check_host_port(v, info.field_name.replace("_", "-")) if v else v

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        if not _DEVICE.match(v):
            raise ValueError(f"invalid device {v!r}: use cpu, cuda or cuda:N")
        return v

    @field_validator("instance_id")
    @classmethod
    def _check_instance_id(cls, v: str) -> str:
        v = v or _default_instance_id()
        if not re.match(r"^[A-Za-z0-9._:-]{1,128}$", v):
            raise ValueError(f"invalid instance id {v!r}: use letters, digits, '.', '_', ':' or '-' (no '/')")
        return v

    @field_validator("lease_ttl_s", "max_loading_concurrency", "inference_threads", "intra_op_threads")
    @classmethod
    def _positive(cls, v: int, info: Any) -> int:
        if v < 1:
            raise ValueError(f"{info.field_name} must be at least 1, got {v}")
        return v

    @field_validator("model_types")
    @classmethod
    def _types(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from mesh.model_types import BUILTIN_TYPES, canonical_model_type
        from mesh.runtime.backends.plugin import installed_plugins

        names = tuple(canonical_model_type(t) for t in v)
        known = (*BUILTIN_TYPES, *installed_plugins())
        unknown = [t for t in names if t not in known]
        if unknown:
            raise ValueError(f"unknown model type {', '.join(unknown)}: model_types are {', '.join(known)} "
                             "(custom module:Class types go in custom_model_types)")
        return names

    @field_validator("custom_model_types")
    @classmethod
    def _custom(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from mesh.model_types import is_class_path

        bad = [t for t in v if not is_class_path(t)]
        if bad:
            raise ValueError(f"custom model types are written package.module:Class; got {', '.join(bad)}")
        return v

    @field_validator("size_prediction_factor")
    @classmethod
    def _factor(cls, v: float) -> float:
        if v < 1.0:
            raise ValueError(f"size_prediction_factor must be >= 1.0 (a model takes at least its file size), got {v}")
        return v
