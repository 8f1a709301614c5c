"""No orphans: `inferno serve` SIGKILLed under load takes its proxy and nodes with it, and a
new serve ends whatever an earlier one left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from inferno.ops import lifeline
from tests.conftest import free_port
from tests.polling import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]


def started_by(supervisor: int) -> set[int]:
    """Every process whose environment names ``supervisor`` (children and grandchildren)."""
    found = set()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"{lifeline.ENV}={supervisor}".encode() in environ.split(b"\0"):
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, FileNotFoundError):
        return False
    return state != "Z"  # a zombie has ended; only its exit status waits to be read


def test_serve_killed_under_load_leaves_no_process() -> None:
    port, ops = free_port(), free_port()
    env = {**os.environ, "INFERNO_SERVE_NODE_PORT_BASE": str(free_port()),
           "INFERNO_SERVE_NODE_OPS_PORT_BASE": str(free_port())}
    serve = subprocess.Popen(
        [sys.executable, "-m", "inferno", "serve", "--engine", "fake", "--nodes", "2",
         "--port", str(port), "--ops-port", str(ops)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    stop = threading.Event()
    answered: list[int] = []

    def load() -> None:
        body = (b'{"model":"smollm2-135m","max_tokens":64,"stream":true,'
                b'"messages":[{"role":"user","content":"hi"}]}')
        deadline = time.monotonic() + 60  # bounded whatever happens
        while not stop.is_set() and time.monotonic() < deadline:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions",
                                         data=body, headers={"content-type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    r.read()
                    answered.append(r.status)
            except OSError:
                pass  # expected once serve is gone

    children: set[int] = set()
    try:
        assert serve.stdout is not None
        assert serve.stdout.readline().decode().strip() == f"http://127.0.0.1:{port}/v1"
        threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        wait_until(lambda: len(answered) >= 8, timeout=30, what="requests answered")
        children = started_by(serve.pid)
        # The proxy, two nodes, and the proxy's ops front process: all under load.
        assert len(children) >= 3, children
        serve.send_signal(signal.SIGKILL)
        serve.wait(5)
        wait_until(lambda: not any(alive(p) for p in children), timeout=6,
                   what="every process serve started to end after serve was SIGKILLed")
    finally:
        stop.set()
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if serve.poll() is None:
            serve.kill()
            serve.wait()


def test_leftovers_of_a_dead_supervisor_are_found_and_ended() -> None:
    # A supervisor that is gone (a pid no process has) and a child it left behind that
    # does not watch its lifeline (as a process of an older version would not).
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        env={**os.environ, lifeline.ENV: str(dead.pid)})
    try:
        wait_until(lambda: leftover.pid in lifeline.stale_children(), timeout=5,
                   what="the leftover to be found")
        assert os.getpid() not in lifeline.stale_children()
        lifeline.end([leftover.pid], wait=5)
        assert leftover.wait(5) == -signal.SIGTERM
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()


def test_a_child_started_by_hand_watches_nothing() -> None:
    env = {k: v for k, v in os.environ.items() if k != lifeline.ENV}
    code = "from inferno.ops import lifeline; print(lifeline.hold(lambda: None))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         check=True, timeout=30)
    assert out.stdout.strip() == b"False"
