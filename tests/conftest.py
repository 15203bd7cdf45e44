"""Fixtures: a real etcd on loopback for the session, and stores over it.

Each test gets its own key prefix (a fresh mesh name), so tests share one etcd
without seeing each other's keys.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mesh import modelgen
from mesh.etcd_server import LocalEtcd
from mesh.registry.etcd_store import EtcdStore
from mesh.registry.keys import KeySchema
from mesh.registry.memory_store import MemoryStore
from mesh.security.certs import LocalPki, local_pki


@pytest.fixture(scope="session", autouse=True)
def _model_roots_in_temp() -> Iterator[None]:
    """Test models live in temp folders: runtimes (in-process settings, spawned processes)
    may load local paths from there (a runtime's default roots are only /mnt/models)."""
    key = "MESHSERVE_MODEL_ROOTS"
    if key in os.environ:
        yield
        return
    os.environ[key] = tempfile.gettempdir()
    yield
    os.environ.pop(key, None)


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEtcd]:
    server = LocalEtcd(tmp_path_factory.mktemp("etcd"))
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def mesh_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def pki(tmp_path: Path) -> LocalPki:
    """A local CA with router, runtime and client certificates (the TLS tests)."""
    return local_pki(tmp_path / "pki")


@pytest.fixture
def keys(mesh_name: str) -> KeySchema:
    return KeySchema(mesh_name)


@pytest.fixture
async def etcd_store(etcd_server: LocalEtcd) -> AsyncIterator[EtcdStore]:
    store = EtcdStore(etcd_server.endpoint, timeout_s=3.0)
    await store.start()
    yield store
    await store.close()


@pytest.fixture(params=["memory", "etcd"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[object]:
    """The same contract, once per implementation."""
    if request.param == "memory":
        mem = MemoryStore()
        await mem.start()
        yield mem
        await mem.close()
    else:
        server: LocalEtcd = request.getfixturevalue("etcd_server")
        etcd = EtcdStore(server.endpoint, timeout_s=3.0)
        await etcd.start()
        yield etcd
        await etcd.close()


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[modelgen.MlpSpec, Path]]:
    root = tmp_path_factory.mktemp("e2e-models")
    out = []
    for i in range(200):
        spec = modelgen.spec_for_bytes(70_000, seed=i)
        out.append((spec, modelgen.write_onnx_mlp(spec, root / f"m{i:03d}.onnx")))
    return out
