"""The puller's settings: built once by the entry point, then passed down.

Every field can be set with a ``MESHSERVE_<NAME>`` environment variable (e.g.
``MESHSERVE_CACHE_DIR``, ``MESHSERVE_CACHE_BUDGET=50Gi``) or, in ``meshserve pull``,
with the matching flag.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesh.settings import ByteSize


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "meshserve" / "models"


class PullerSettings(BaseSettings):
    """Where models are cached, how they are fetched, and how hard to retry."""

    model_config = SettingsConfigDict(env_prefix="MESHSERVE_", extra="ignore", frozen=True)

    #: Disk cache root (one directory per model inside). One puller per directory at a
    #: time: a lock file refuses a second process.
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    #: Bytes the cache may hold on disk; least-recently-used models that no runtime
    #: holds are removed to make room. A model larger than this cannot be cached.
    cache_budget: ByteSize = 20 * 2**30
    #: ModelMesh ``storage-config``: a JSON file mapping key -> storage JSON, or a
    #: directory with one file per key (a mounted Kubernetes Secret). None: no
    #: credentials (anonymous / ambient, e.g. AWS environment variables or IRSA).
    storage_config: Path | None = None
    #: Models pulled at once; further pulls wait their turn.
    max_concurrent_pulls: int = Field(default=4, ge=1)
    #: Objects downloaded at once within one pull (a folder of many small files).
    object_parallelism: int = Field(default=16, ge=1)
    #: Where ``pvc://NAME/path`` volumes are mounted: ``<pvc_root>/NAME/path``.
    pvc_root: Path = Path("/mnt/models")
    #: Attempts per storage call (list, stat, each object) before giving up on
    #: transient errors (connection refused/reset, 5xx, timeouts, truncated bodies).
    retry_attempts: int = Field(default=5, ge=1)
    #: First backoff between attempts, doubled each time up to ``retry_backoff_max_s``.
    retry_backoff_s: float = Field(default=0.5, ge=0)
    #: Ceiling on one backoff sleep.
    retry_backoff_max_s: float = Field(default=10.0, ge=0)
    #: S3 objects at least this large are fetched as parallel ranged GETs.
    multipart_threshold: ByteSize = 64 * 2**20
    #: Size of each ranged GET.
    multipart_chunk_size: ByteSize = 16 * 2**20
    #: Ranged GETs in flight per large object.
    multipart_parallelism: int = Field(default=8, ge=1)
    #: The disk cache's LRU order (last-used times, kept in memory) is saved this often
    #: while it changes, and at shutdown; after a crash it is at most this old.
    lru_save_interval_s: float = Field(default=10.0, gt=0)
    #: Seconds to open a connection to storage.
    connect_timeout_s: float = Field(default=10.0, gt=0)
    #: Seconds without a byte from storage before the attempt counts as failed.
    read_timeout_s: float = Field(default=60.0, gt=0)
    #: Check MD5/CRC32C where the store publishes one (S3 single-part ETags, GCS).
    verify_checksums: bool = True

    @field_validator("cache_dir", "pvc_root")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().absolute()
