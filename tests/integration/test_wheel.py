"""The package as a user without the repository gets it: a wheel built from the sources,
installed into a fresh virtual environment, serving a real chat completion.

The wheel is installed without its dependencies, which the new environment borrows from
the test's own (one path line in a ``.pth`` file: no download, no second copy); the
``inferno`` it runs is the wheel's, from outside the checkout. So what this proves is what
breaks wheels in practice: package data (migrations, templates, static files) missing from
the wheel, imports of files that only exist in a checkout, and the console script.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import openai
import pytest

from tests.conftest import free_port

pytest.importorskip("llama_cpp", reason="the llama.cpp engine is not installed")
pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_a_wheel_installs_into_a_fresh_venv_and_serves(tmp_path: Path) -> None:
    # Build from a copy: a build writes build/ and *.egg-info beside the sources.
    src = tmp_path / "src-copy"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", str(src), "-w", str(dist)], check=True, capture_output=True,
                   timeout=300)
    [wheel] = dist.glob("inferno-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                    "--no-deps", "-q", str(wheel)], check=True, capture_output=True,
                   timeout=300)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig."
                                "get_paths()['purelib'])"], check=True, capture_output=True,
                               text=True).stdout.strip())
    (site / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    home = tmp_path / "home"  # no repository anywhere near: cwd and data dir elsewhere
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / "data"),
               INFERNO_SERVE_NODE_PORT_BASE=str(free_port()),
               INFERNO_SERVE_NODE_OPS_PORT_BASE=str(free_port()))
    where = subprocess.run([str(python), "-c", "import inferno; print(inferno.__file__)"],
                           check=True, capture_output=True, text=True, env=env, cwd=home)
    assert where.stdout.startswith(str(site)), where.stdout  # the wheel's, not the checkout's

    port, ops = free_port(), free_port()
    serve = subprocess.Popen([str(venv / "bin" / "inferno"), "serve", "--nodes", "1",
                              "--port", str(port), "--ops-port", str(ops)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=home,
                             start_new_session=True)
    try:
        assert serve.stdout is not None
        line = serve.stdout.readline().decode().strip()  # printed once everything is ready
        assert line == f"http://127.0.0.1:{port}/v1", (
            line, serve.stderr.read().decode()[-2000:] if serve.stderr else "")
        client = openai.OpenAI(base_url=line, api_key="unused", max_retries=0, timeout=60)
        answer = client.chat.completions.create(
            model="smollm2-135m", temperature=0, max_tokens=16,
            messages=[{"role": "user", "content": "what is the capital of france?"}])
        assert "Paris" in (answer.choices[0].message.content or "")
        serve.send_signal(signal.SIGINT)
        assert serve.wait(60) == 0
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
