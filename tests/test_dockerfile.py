"""The Dockerfile's shape, since no Docker engine runs here to build it.

Checks what a build would get wrong silently or late: the two targets exist, run
as a non-root user with `meshserve` as the entry point, install extras that
pyproject.toml defines (never cpu and gpu together), the torch the project pins,
and copy every package the project ships without the build context leaving them out.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(path: Path) -> tuple[dict[str, str], dict[str, Stage]]:
    """(global ARG defaults, stages by name): enough of the format for these checks."""
    text = re.sub(r"\\\n", " ", path.read_text())  # join continuation lines
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            m = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest, re.IGNORECASE)
            assert m, f"every stage is named: FROM {rest}"
            base = re.sub(r"\$\{(\w+)\}", lambda v: args[v.group(1)], m.group(1))
            current = stages[m.group(2)] = Stage(m.group(2), base)
        elif current is None:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            current.instructions.append((keyword, rest))
    return args, stages


ARGS, STAGES = parse(ROOT / "Dockerfile")
TARGETS = {"cpu": "cpu-build", "cuda": "cuda-build"}


def test_both_targets_exist_and_are_multi_stage() -> None:
    for target, build in TARGETS.items():
        assert target in STAGES and build in STAGES
        copies = STAGES[target].all("COPY")
        assert any(c.startswith(f"--from={build} ") for c in copies), f"{target} copies its build stage's result"
        # The runtime stage installs nothing with pip: no compilers or caches in the image.
        assert not any("pip install" in r for r in STAGES[target].all("RUN")), target


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_target_runs_meshserve_as_a_non_root_user(target: str) -> None:
    stage = STAGES[target]
    user = stage.all("USER")[-1].split(":")[0]
    assert user not in ("root", "0")
    # Numeric, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
    assert user.isdigit() and int(user) > 0
    assert json.loads(stage.all("ENTRYPOINT")[-1]) == ["meshserve"]  # exec form: signals reach meshserve


def test_installed_extras_exist_and_never_mix_cpu_with_gpu() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    # envoy: the gateway container (Envoy in front of the router) runs the same image.
    expected = {"cpu-build": {"cpu", "envoy"}, "cuda-build": {"gpu", "envoy"}}
    for stage_name, wanted in expected.items():
        installed = {
            extra
            for run in STAGES[stage_name].all("RUN")
            for group in re.findall(r"""pip install ["']?\.\[([\w,-]+)\]""", run)
            for extra in group.split(",")
        }
        assert installed == wanted, stage_name
        assert installed <= set(extras)


def test_torch_is_the_pinned_version_from_the_right_index() -> None:
    pinned = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch=="))
    assert pinned == f"torch=={ARGS['TORCH_VERSION']}"
    assert ARGS["TORCH_CPU_INDEX"].endswith("/cpu")
    assert re.search(r"/cu\d+$", ARGS["TORCH_CUDA_INDEX"])
    for stage_name in TARGETS.values():
        assert any("torch==${TORCH_VERSION}" in r for r in STAGES[stage_name].all("RUN"))


def test_cuda_target_builds_on_a_cuda_runtime_image() -> None:
    assert STAGES["cuda"].base.startswith("nvidia/cuda:") and "-runtime-" in STAGES["cuda"].base
    assert STAGES["cuda"].base == STAGES["cuda-build"].base  # the venv's python path must match
    m = re.search(r"nvidia/cuda:(\d+)\.", STAGES["cuda"].base)
    assert m, STAGES["cuda"].base
    cuda_major = m.group(1)
    assert re.search(rf"/cu{cuda_major}\d+$", ARGS["TORCH_CUDA_INDEX"]), "torch and the base image disagree on CUDA"


def test_every_shipped_package_is_copied_and_not_docker_ignored() -> None:
    ignored = {
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    sources = {
        src.rstrip("/") for c in STAGES["source"].all("COPY") for src in c.split()[:-1]
    }
    for build in TARGETS.values():
        assert "--from=source /src /src" in STAGES[build].all("COPY"), build
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages | {"pyproject.toml", "README.md"} <= sources
    for src in sources:
        assert (ROOT / src).exists(), src
        assert src not in ignored, f"{src} is copied but .dockerignore leaves it out"
    assert {".git", ".venv"} <= ignored
