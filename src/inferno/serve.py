"""``inferno serve``: a proxy and local nodes on this machine, supervised until Ctrl-C.

Each component runs as its own process (a crashed node cannot take the proxy down) and
nodes register with the proxy exactly as remote ones would. A node that dies is restarted
with exponential back-off. Stopping sends SIGTERM to the nodes first (each deregisters,
then finishes its work), then to the proxy.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from inferno.core.config import ServeSettings

console = Console(stderr=True)


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    history: list[float] = field(default_factory=list)

    def start(self) -> None:
        # Own process group: Ctrl-C reaches serve only, which then stops children in order.
        self.proc = subprocess.Popen(self.argv, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _argv(component: str, *args: str, config: Path | None) -> list[str]:
    argv = [sys.executable, "-m", "inferno", component, *args]
    return [*argv, "--config", str(config)] if config else argv


def plan(s: ServeSettings, config: Path | None) -> tuple[Child, list[Child]]:
    proxy = Child("proxy", _argv("proxy", "--host", s.host, "--port", str(s.port),
                                 "--ops-port", str(s.ops_port), config=config))
    nodes = [
        Child(f"node-{i}", _argv(
            "backend", "--host", "127.0.0.1", "--port", str(s.node_port_base + i),
            "--ops-port", str(s.node_ops_port_base + i), "--node-id", f"node-{i}",
            "--model", s.model, "--engine", s.engine, "--threads", str(s.threads),
            "--parallel", str(s.parallel), "--n-ctx", str(s.n_ctx),
            "--discovery-lb", f"127.0.0.1:{s.ops_port}", config=config))
        for i in range(s.nodes)
    ]
    return proxy, nodes


def _telemetry(port: int) -> dict[str, object] | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", "/telemetry")
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return json.loads(data) if resp.status == 200 else None
    except (OSError, ValueError):
        return None


def run_serve(s: ServeSettings, config: Path | None) -> int:
    proxy, nodes = plan(s, config)
    stopping = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    children = [proxy, *nodes]
    for child in children:
        child.start()
    url = f"http://{s.host}:{s.port}/v1"
    try:
        ready = _wait_ready(s, children, lambda: stopping)
        if ready:
            _banner(s, url)
        while not stopping and ready:
            _supervise(children)
            time.sleep(0.2)
    finally:
        _shutdown(proxy, nodes)
    return 0 if ready else 1


def _wait_ready(s: ServeSettings, children: list[Child], stopping: object) -> bool:
    deadline = time.monotonic() + 300
    with console.status("[bold]Starting Inferno…") as status:
        while time.monotonic() < deadline:
            if callable(stopping) and stopping():
                return False
            for child in children:
                if child.proc is not None and child.proc.poll() is not None:
                    console.print(f"[red]{child.name} exited with code {child.proc.returncode} "
                                  "during start-up[/red]")
                    return False
            t = _telemetry(s.ops_port)
            registered = len(t.get("nodes", [])) if isinstance(t, dict) else 0  # type: ignore[arg-type]
            status.update(f"[bold]Starting Inferno…[/bold] proxy "
                          f"{'up' if t else 'starting'}, nodes registered {registered}/{s.nodes}")
            if registered >= s.nodes:
                return True
            time.sleep(0.2)
    console.print("[red]Inferno did not become ready within 300 s[/red]")
    return False


def _banner(s: ServeSettings, url: str) -> None:
    body = (f"[bold green]Inferno is ready[/bold green]\n\n"
            f"OpenAI API   [bold]{url}[/bold]\n"
            f"Model        {s.model}  ({s.nodes} node(s), engine {s.engine})\n"
            f"Operations   http://{s.host}:{s.ops_port}/health  /metrics  /telemetry\n\n"
            f"Try:  curl {url}/chat/completions -H 'content-type: application/json' \\\n"
            f"        -d '{{\"model\": \"{s.model}\", \"messages\": "
            f"[{{\"role\": \"user\", \"content\": \"What is the capital of France?\"}}]}}'\n\n"
            "Ctrl-C stops everything.")
    console.print(Panel(body, title="inferno serve", expand=False))
    print(url, flush=True)


def _supervise(children: list[Child]) -> None:
    now = time.monotonic()
    for child in children:
        if child.alive():
            continue
        if child.next_start == 0.0:
            code = child.proc.returncode if child.proc else None
            child.restarts += 1
            delay = min(60.0, 2.0 ** min(child.restarts - 1, 6))
            child.next_start = now + delay
            console.print(f"[yellow]{child.name} exited (code {code}); restarting in "
                          f"{delay:.0f} s[/yellow]")
        elif now >= child.next_start:
            child.next_start = 0.0
            child.start()


def _shutdown(proxy: Child, nodes: list[Child], timeout: float = 30.0) -> None:
    console.print("[bold]Stopping: draining nodes, then the proxy…[/bold]")
    for group in (nodes, [proxy]):
        for child in group:
            if child.alive() and child.proc is not None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in group:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait()
    console.print("[bold]Inferno stopped.[/bold]")
