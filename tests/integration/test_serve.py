"""`inferno serve`, the newcomer's command: everything up, a real streamed answer, clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import openai
import pytest

from tests.conftest import free_port
from tests.integration.procs import get_json

pytest.importorskip("llama_cpp", reason="the llama.cpp engine is not installed")
pytestmark = pytest.mark.integration


def test_serve_streams_a_real_answer_and_stops_cleanly() -> None:
    port, ops = free_port(), free_port()
    base = free_port()
    # Node ports are base+i; pick a base whose neighbours are free too.
    node_ops = free_port()
    env = {**os.environ, "INFERNO_SERVE_NODE_PORT_BASE": str(base),
           "INFERNO_SERVE_NODE_OPS_PORT_BASE": str(node_ops)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferno", "serve", "--port", str(port), "--ops-port", str(ops)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().strip()  # printed once everything is ready
        assert url == f"http://127.0.0.1:{port}/v1"
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        stream = client.chat.completions.create(
            model="smollm2-135m", stream=True, temperature=0, max_tokens=32,
            messages=[{"role": "user", "content": "what is the capital of france?"}])
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert "Paris" in text
        vitals = get_json(ops, "/telemetry")
        assert vitals is not None and len(vitals["nodes"]) == 2  # type: ignore[arg-type]
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(30) == 0
        assert time.monotonic() - started < 30
        assert get_json(ops, "/health") is None  # the proxy is gone
        assert get_json(node_ops, "/health") is None  # and so are the nodes
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
