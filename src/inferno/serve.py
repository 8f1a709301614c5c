"""``inferno serve``: a proxy, the governator and local nodes on this machine, until Ctrl-C.

The proxy runs as its own process (restarted with back-off if it dies). The governator
runs in this process with the local provider, which owns node lifecycle: it starts
``--nodes`` nodes (the pool's minimum), adds nodes under load up to
``governator.max_replicas``, drains them when the load is gone, and restarts a crashed
node with back-off. Nodes register with the proxy exactly as remote ones would.
Stopping drains the nodes first (each leaves rotation, then finishes its work), then
stops the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.panel import Panel

from inferno.core.config import GovernatorSettings, ServeSettings
from inferno.core.errors import ConfigError
from inferno.net import HttpClient, get_json
from inferno.ops import lifeline

if TYPE_CHECKING:
    from inferno.governator.loop import Governator

console = Console(stderr=True)
log = logging.getLogger("inferno.serve")


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0

    def start(self) -> None:
        # Own process group: Ctrl-C reaches serve only, which then stops children in order;
        # the lifeline ends the child should serve itself end without stopping it.
        self.proc = subprocess.Popen(self.argv, start_new_session=True, env=lifeline.child_env())

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _argv(component: str, *args: str, config: Path | None) -> list[str]:
    argv = [sys.executable, "-m", "inferno", component, *args]
    return [*argv, "--config", str(config)] if config else argv


def proxy_child(s: ServeSettings, config: Path | None) -> Child:
    # One proxy worker: the nodes share this machine's cores, and one worker already
    # serves thousands of requests a second, more than local nodes can generate.
    return Child("proxy", _argv("proxy", "--host", s.host, "--port", str(s.port),
                                "--ops-port", str(s.ops_port), "--workers", "1",
                                config=config))


async def _telemetry(client: HttpClient, port: int) -> dict[str, object] | None:
    data = await get_json(client, "127.0.0.1", port, "/telemetry", within=1.0)
    return data if isinstance(data, dict) else None


def run_serve(s: ServeSettings, gs: GovernatorSettings, config: Path | None) -> int:
    import uvloop

    from inferno.governator.providers import NodeTemplate
    from inferno.governator.wiring import build_governator, load_policy_and_prices

    # Nodes register with this proxy; the governator reads its telemetry there.
    gs = gs.model_copy(update={"proxy_ops": f"127.0.0.1:{s.ops_port}", "provider": "local"})
    try:
        policy, prices = load_policy_and_prices(gs, min_replicas=s.nodes, model=s.model)
    except ConfigError as exc:
        console.print(f"[red]error: {exc.message}[/red]")
        return 2
    template = NodeTemplate(model=s.model, engine=s.engine, threads=s.threads,
                            parallel=s.parallel, n_ctx=s.n_ctx)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    governator = build_governator(gs, policy, prices, template=template,
                                  port_base=s.node_port_base,
                                  ops_port_base=s.node_ops_port_base, config=config)
    stale = lifeline.stale_children()
    if stale:  # an earlier serve was killed before its children noticed: end them first
        console.print(f"[yellow]Ending {len(stale)} process(es) left by an earlier "
                      f"inferno serve: {', '.join(map(str, stale))}[/yellow]")
        lifeline.end(stale)
    proxy = proxy_child(s, config)
    return uvloop.run(_main(s, gs, governator, proxy))


async def _main(s: ServeSettings, gs: GovernatorSettings, governator: Governator,
                proxy: Child) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    proxy.start()
    try:
        gov_port = await governator.start_ops(gs.host, gs.ops_port)
    except OSError:  # the default port is taken (another serve?): any free one will do
        gov_port = await governator.start_ops(gs.host, 0)
    await governator.start()
    ready = False
    try:
        ready = await _wait_ready(s, proxy, governator, stop)
        if ready:
            _banner(s, f"http://{s.host}:{s.port}/v1", gs.host, gov_port)
        while ready and not stop.is_set():
            _supervise(proxy)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    finally:
        console.print("[bold]Stopping: draining nodes, then the proxy…[/bold]")
        await governator.drain()
        await asyncio.to_thread(_stop_child, proxy)
        console.print("[bold]Inferno stopped.[/bold]")
    return 0 if ready else 1


async def _wait_ready(s: ServeSettings, proxy: Child, governator: Governator,
                      stop: asyncio.Event) -> bool:
    client = HttpClient()
    try:
        return await _poll_ready(s, proxy, governator.provider, stop, client,
                                 time.monotonic() + 300)
    finally:
        await client.aclose()


async def _poll_ready(s: ServeSettings, proxy: Child, provider: object, stop: asyncio.Event,
                      client: HttpClient, deadline: float) -> bool:
    from inferno.governator.providers.local import LocalProvider

    with console.status("[bold]Starting Inferno…") as status:
        while time.monotonic() < deadline and not stop.is_set():
            if proxy.proc is not None and proxy.proc.poll() is not None:
                console.print(f"[red]proxy exited with code {proxy.proc.returncode} "
                              "during start-up[/red]")
                return False
            if isinstance(provider, LocalProvider):
                crashed = [n for n in provider.nodes if n.restarts]
                if crashed:
                    console.print(f"[red]{crashed[0].id} exited during start-up "
                                  "(see its log above)[/red]")
                    return False
            t = await _telemetry(client, s.ops_port)
            nodes = t.get("nodes") if t else None
            registered = len(nodes) if isinstance(nodes, list) else 0
            status.update(f"[bold]Starting Inferno…[/bold] proxy "
                          f"{'up' if t else 'starting'}, nodes registered {registered}/{s.nodes}")
            if registered >= s.nodes:
                return True
            await asyncio.sleep(0.2)
    if not stop.is_set():
        console.print("[red]Inferno did not become ready within 300 s[/red]")
    return False


def _banner(s: ServeSettings, url: str, gov_host: str, gov_port: int) -> None:
    body = (f"[bold green]Inferno is ready[/bold green]\n\n"
            f"OpenAI API   [bold]{url}[/bold]\n"
            f"Anthropic    {url.removesuffix('/v1')}  (ANTHROPIC_BASE_URL: /v1/messages)\n"
            f"Model        {s.model}  ({s.nodes} node(s), engine {s.engine})\n"
            f"Operations   http://{s.host}:{s.ops_port}/health  /metrics  /telemetry\n"
            f"Governator   http://{gov_host}:{gov_port}/governator/state  "
            f"(inferno governator status --ops-port {gov_port})\n\n"
            f"Try:  curl {url}/chat/completions -H 'content-type: application/json' \\\n"
            f"        -d '{{\"model\": \"{s.model}\", \"messages\": "
            f"[{{\"role\": \"user\", \"content\": \"what is the capital of france?\"}}]}}'\n\n"
            "Ctrl-C stops everything.")
    console.print(Panel(body, title="inferno serve", expand=False))
    print(url, flush=True)


def _supervise(child: Child) -> None:
    if child.alive():
        return
    now = time.monotonic()
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


def _stop_child(child: Child, timeout: float = 30.0) -> None:
    if child.proc is None:
        return
    if child.alive():
        child.proc.send_signal(signal.SIGTERM)
    try:
        child.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.proc.pid, signal.SIGKILL)
        child.proc.wait()
