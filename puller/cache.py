"""The disk cache: one directory per model (id + content version) under ``cache_dir``.

Layout::

    cache_dir/.lock                       one puller process per cache (flock)
    cache_dir/lru.json                    last-used time of every entry (LRU order), saved in the background
    cache_dir/models/<entry>/manifest.json    what the entry holds (written last)
    cache_dir/models/<entry>/data/...         the model's files, handed to the runtime
    cache_dir/tmp/<staging>/                  pulls in progress; emptied at start-up

``<entry>`` is a readable slug of the model id, a hash of the id (ids may hold ``/``
and ``:``) and a hash of the content version. An entry is built in ``tmp/`` and
renamed into ``models/`` in one step, so ``models/`` only ever holds complete
entries; at start-up each is re-validated against its manifest (files present with
their sizes) and anything else is removed. A model's content never changes under its
id, so a hit is served from disk without asking storage.

The byte budget counts entries plus reservations for pulls in flight. Room is made
by evicting least-recently-used entries whose model is not pinned (held by a runtime,
or awaited by a fetch). Index, pins and reservations live on the event loop; the
methods that touch files are marked blocking and run in an executor.

A hit writes nothing: the last-used time changes in memory and the whole LRU order
goes to ``lru.json`` in one atomic write, in the background (the fetcher, every
``lru_save_interval_s`` while something changed) and at a clean shutdown. After a
crash the order is the one last saved (at most that interval old); an entry pulled
since keeps its manifest's time (when it was pulled).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mesh.clock import Clock
from mesh.errors import CacheFull, FailedPrecondition, InvalidModelId
from mesh.registry.ids import validate_id

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LRU_FILE = "lru.json"
DATA = "data"
_SCHEMA = 1
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def entry_dir_name(model_id: str, version: str) -> str:
    """A safe, unique directory name: readable slug + id hash + version hash."""
    slug = _UNSAFE.sub("_", model_id).strip("._")[:64] or "model"
    id_hash = hashlib.sha256(model_id.encode()).hexdigest()[:12]
    version_hash = hashlib.sha256(version.encode()).hexdigest()[:8]
    return f"{slug}-{id_hash}-{version_hash}"


@dataclass
class CacheEntry:
    model_id: str
    #: Where the content came from (Source.digest(): location, not credentials).
    source_digest: str
    #: Content version (ETags / generations / mtimes of the objects, hashed).
    version: str
    #: The URI for people (no credentials, no query).
    uri: str
    size_bytes: int
    #: Relative path -> size of every file under data/.
    files: dict[str, int]
    #: The file to hand over when the model is one file (None: the data/ directory).
    single_file: str | None
    created_ms: int
    last_used_ms: int
    dir_name: str = field(default="")

    def __post_init__(self) -> None:
        if not self.dir_name:
            self.dir_name = entry_dir_name(self.model_id, self.version)


class DiskCache:
    def __init__(self, root: Path, budget: int, clock: Clock) -> None:
        self.root = root
        self.budget = budget
        self._clock = clock
        self._models = root / "models"
        self._tmp = root / "tmp"
        self._index: dict[str, CacheEntry] = {}
        self._pins: Counter[str] = Counter()
        self._reserved: dict[str, int] = {}
        self._lock_fd: int | None = None
        #: Some last-used time changed since lru.json was written.
        self._lru_dirty = False

    # -- paths --------------------------------------------------------------------

    def entry_path(self, entry: CacheEntry) -> Path:
        """What the runtime gets: the single file, else the data directory."""
        data = self._models / entry.dir_name / DATA
        return data / entry.single_file if entry.single_file else data

    # -- start-up and shutdown (blocking) -----------------------------------------

    def open(self) -> dict[str, int]:
        """Locks the directory, empties tmp/, validates every entry. Blocking."""
        try:
            for d in (self._models, self._tmp):
                d.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise FailedPrecondition(
                f"cannot use cache directory {self.root}: {e.strerror}; point MESHSERVE_CACHE_DIR (--cache-dir) "
                "at a writable directory"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FailedPrecondition(
                f"cache directory {self.root} is in use by another puller process; give each process its "
                "own --cache-dir (MESHSERVE_CACHE_DIR)"
            ) from None
        self._lock_fd = fd
        stats = Counter[str]()
        for leftover in self._tmp.iterdir():
            _remove(leftover)
            stats["tmp_removed"] += 1
        for path in sorted(self._models.iterdir()):
            entry = _load_valid(path)
            if entry is None:
                log.warning("cache: removing incomplete or damaged entry %s", path.name)
                _remove(path)
                stats["invalid_removed"] += 1
                continue
            old = self._index.get(entry.model_id)
            if old is not None:  # two versions of one id: keep the one used last
                loser = old if old.last_used_ms <= entry.last_used_ms else entry
                _remove(self._models / loser.dir_name)
                stats["invalid_removed"] += 1
                if loser is old:
                    self._index[entry.model_id] = entry
                continue
            self._index[entry.model_id] = entry
            stats["kept"] += 1
        stats["lru_restored"] = self._restore_lru()
        for victim in self._pick_victims(0) or []:  # the budget may have shrunk since last run
            self.forget(victim)
            _remove(self._models / victim.dir_name)
            stats["evicted"] += 1
        return dict(stats)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- index, pins, budget (event loop) -----------------------------------------

    def lookup(self, model_id: str) -> CacheEntry | None:
        return self._index.get(model_id)

    def entries(self) -> list[CacheEntry]:
        return sorted(self._index.values(), key=lambda e: e.last_used_ms)

    def used_bytes(self) -> int:
        return sum(e.size_bytes for e in self._index.values()) + sum(self._reserved.values())

    def pin(self, model_id: str) -> None:
        self._pins[model_id] += 1

    def unpin(self, model_id: str) -> None:
        if self._pins[model_id] > 1:
            self._pins[model_id] -= 1
        else:
            self._pins.pop(model_id, None)

    def pins(self, model_id: str) -> int:
        return self._pins[model_id]

    def touch(self, entry: CacheEntry) -> None:
        """A use: in memory only (``lru_snapshot`` + ``write_lru`` persist it)."""
        entry.last_used_ms = self._clock.now_ms()
        self._lru_dirty = True

    def lru_snapshot(self) -> dict[str, int] | None:
        """Entry directory -> last-used ms if anything changed since the last snapshot, else None.
        Taken on the event loop; ``write_lru`` writes it from an executor."""
        if not self._lru_dirty:
            return None
        self._lru_dirty = False
        return {e.dir_name: e.last_used_ms for e in self._index.values()}

    def write_lru(self, snapshot: dict[str, int]) -> None:
        """Writes the LRU order in one atomic replace. Blocking."""
        tmp = self.root / f".{LRU_FILE}.{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps({"v": _SCHEMA, "last_used_ms": snapshot}, sort_keys=True))
        os.replace(tmp, self.root / LRU_FILE)

    def _restore_lru(self) -> int:
        """Applies lru.json's last-used times (newer than the manifests'); a missing or
        damaged file leaves the manifests' times (the order of the pulls). Blocking."""
        path = self.root / LRU_FILE
        for stray in self.root.glob(f".{LRU_FILE}.*"):
            stray.unlink(missing_ok=True)
        try:
            raw = json.loads(path.read_text())
            times = raw["last_used_ms"] if raw.get("v") == _SCHEMA else {}
            if not isinstance(times, dict):
                raise ValueError("last_used_ms is not an object")
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, AttributeError) as e:
            log.warning("cache: %s is unreadable (%s); LRU order falls back to pull times", path, e)
            return 0
        restored = 0
        for entry in self._index.values():
            t = times.get(entry.dir_name)
            if isinstance(t, int) and t > entry.last_used_ms:
                entry.last_used_ms = t
                restored += 1
        return restored

    def forget(self, entry: CacheEntry) -> None:
        """Drops an entry from the index (its files are removed by the caller)."""
        if self._index.get(entry.model_id) is entry:
            del self._index[entry.model_id]

    def reserve(self, model_id: str, nbytes: int, *, what: str) -> list[CacheEntry]:
        """Sets the model's reservation to ``nbytes``, evicting to make room.

        Returns the evicted entries, already out of the index: the caller deletes their
        files. Raises CacheFull when unpinned entries cannot free enough.
        """
        previous = self._reserved.pop(model_id, 0)
        if nbytes > self.budget:
            raise CacheFull(
                f"{what} needs {nbytes:,} bytes on disk but the cache budget is {self.budget:,}; "
                "raise MESHSERVE_CACHE_BUDGET (--cache-budget)", retryable=False
            )
        victims = self._pick_victims(nbytes)
        if victims is None:
            self._reserved[model_id] = previous
            held = sum(e.size_bytes for e in self._index.values() if self._pins[e.model_id])
            raise CacheFull(
                f"{what} needs {nbytes:,} bytes but the cache budget is {self.budget:,} and models held by the "
                f"runtime take {held:,}, pulls in flight {sum(self._reserved.values()):,}; unload a model or "
                "raise MESHSERVE_CACHE_BUDGET"
            )
        for v in victims:
            self.forget(v)
            log.info("cache: evicting %s (%d bytes, least recently used)", v.model_id, v.size_bytes)
        self._reserved[model_id] = nbytes
        return victims

    def unreserve(self, model_id: str) -> None:
        self._reserved.pop(model_id, None)

    def insert(self, entry: CacheEntry) -> None:
        self._reserved.pop(entry.model_id, None)
        self._index[entry.model_id] = entry
        self._lru_dirty = True

    def _pick_victims(self, nbytes: int) -> list[CacheEntry] | None:
        free = self.budget - self.used_bytes()
        victims: list[CacheEntry] = []
        for e in sorted(self._index.values(), key=lambda e: (e.last_used_ms, e.dir_name)):
            if free >= nbytes:
                break
            if self._pins[e.model_id]:
                continue
            victims.append(e)
            free += e.size_bytes
        return victims if free >= nbytes else None

    # -- files (blocking) ---------------------------------------------------------

    def staging(self) -> Path:
        """A fresh directory under tmp/ for one pull. Blocking."""
        path = self._tmp / uuid.uuid4().hex
        (path / DATA).mkdir(parents=True)
        return path

    def commit(self, staging: Path, entry: CacheEntry) -> None:
        """Writes the manifest and renames the staging directory into place. Blocking."""
        _write_manifest(staging, entry)
        final = self._models / entry.dir_name
        if final.exists():
            _remove(final)
        os.rename(staging, final)

    def remove(self, entry: CacheEntry) -> None:
        """Deletes an entry's files. Blocking."""
        _remove(self._models / entry.dir_name)

    def discard(self, path: Path) -> None:
        _remove(path)


def _write_manifest(directory: Path, entry: CacheEntry) -> None:
    tmp = directory / f".{MANIFEST}.{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps({"v": _SCHEMA, **asdict(entry)}, sort_keys=True))
    os.replace(tmp, directory / MANIFEST)


def _load_valid(path: Path) -> CacheEntry | None:
    """The entry if its manifest parses and every listed file has its size, else None."""
    try:
        raw: dict[str, Any] = json.loads((path / MANIFEST).read_text())
        if raw.pop("v", None) != _SCHEMA:
            return None
        entry = CacheEntry(**raw)
        validate_id(entry.model_id)
        if entry.dir_name != path.name or sum(entry.files.values()) != entry.size_bytes:
            return None
        data = path / DATA
        for rel, size in entry.files.items():
            if (data / rel).stat().st_size != size:
                return None
        if entry.single_file and entry.single_file not in entry.files:
            return None
    except (OSError, ValueError, TypeError, InvalidModelId):
        return None
    for stray in path.glob(f".{MANIFEST}.*"):  # a manifest update cut short
        stray.unlink(missing_ok=True)
    return entry


def _remove(path: Path) -> None:
    """Removes a file or tree; a directory is renamed aside first so it never looks whole."""
    if path.is_dir() and not path.is_symlink():
        doomed = path.with_name(f".{path.name}.deleting-{uuid.uuid4().hex[:6]}")
        try:
            os.rename(path, doomed)
        except OSError:
            doomed = path
        shutil.rmtree(doomed, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
