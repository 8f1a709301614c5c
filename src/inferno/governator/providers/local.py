"""The local provider: ``inferno backend`` processes on this machine.

Each node is a child process in its own session (Ctrl-C reaches the parent only), on
free loopback ports (or ``port_base + slot`` when bases are given and free), registering
with the proxy like any remote node. A node that exits without being asked is restarted
in the same slot with exponential back-off (1, 2, 4 ... 60 s; the streak is forgotten
after a minute of health), so a crash loop costs little. The node count per pool never
exceeds the template's ``max_replicas``. Scale-down removes the node from the proxy
first, then sends SIGTERM: the node finishes its in-flight requests and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from inferno.core.errors import InfernoError, ProviderError
from inferno.governator.providers.base import NodeTemplate, ProxyDrainer
from inferno.governator.signals import Endpoint
from inferno.net import HttpClient
from inferno.ops import lifeline

log = logging.getLogger("inferno.governator.local")

State = Literal["starting", "ready", "draining", "restarting"]
HEALTHY_RESET_S = 60.0


def free_port(host: str = "127.0.0.1", preferred: int = 0,
              taken: frozenset[int] = frozenset()) -> int:
    """A port free now and not in ``taken``: ports given to nodes that may not have bound
    them yet (the kernel hands a port just probed and closed out again)."""
    first = (preferred,) if preferred and preferred not in taken else ()
    for candidate in first + (0,) * 16:
        with socket.socket() as s:
            try:
                s.bind((host, candidate))
            except OSError:
                continue
            port = int(s.getsockname()[1])
            if port not in taken:
                return port
    raise ProviderError("no free port on this machine")


@dataclass
class LocalNode:
    id: str
    pool: str
    slot: int
    port: int = 0
    ops_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    state: State = "starting"
    started_at: float = 0.0
    ready_at: float = 0.0
    restarts: int = 0
    next_start: float = 0.0
    kill_at: float = 0.0


class LocalProvider:
    def __init__(self, templates: dict[str, NodeTemplate], *, proxy_host: str, proxy_port: int,
                 client: HttpClient, host: str = "127.0.0.1", port_base: int = 0,
                 ops_port_base: int = 0, drain_timeout: float = 30.0,
                 config: Path | None = None, log_dir: Path | None = None,
                 id_prefix: str = "node", clock: Callable[[], float] = time.time,
                 argv0: list[str] | None = None) -> None:
        self._templates = templates
        self._proxy = (proxy_host, proxy_port)
        self._client = client
        self._drainer = ProxyDrainer(client, proxy_host, proxy_port)
        self._host = host
        self._port_base = port_base
        self._ops_base = ops_port_base
        self._drain_timeout = drain_timeout
        self._config = config
        self._log_dir = log_dir
        self._prefix = id_prefix
        self._clock = clock
        self._argv0 = argv0 or [sys.executable, "-m", "inferno"]
        self.nodes: list[LocalNode] = []

    async def start(self) -> None:
        return None

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(n.id, n.pool, self._host, n.ops_port,
                         "starting" if n.state == "restarting" else n.state)
                for n in self.nodes if n.ops_port]

    def _active(self, pool: str) -> list[LocalNode]:
        return [n for n in self.nodes if n.pool == pool and n.state != "draining"]

    def _argv(self, node: LocalNode, t: NodeTemplate) -> list[str]:
        argv = [*self._argv0, "backend", "--host", self._host, "--port", str(node.port),
                "--ops-port", str(node.ops_port), "--node-id", node.id, "--model", t.model,
                "--engine", t.engine, "--threads", str(t.threads), "--parallel",
                str(t.parallel), "--n-ctx", str(t.n_ctx),
                "--discovery-lb", f"{self._proxy[0]}:{self._proxy[1]}"]
        return [*argv, "--config", str(self._config)] if self._config else argv

    def _spawn(self, node: LocalNode) -> None:
        t = self._templates[node.pool]
        taken = frozenset(p for n in self.nodes if n is not node for p in (n.port, n.ops_port))
        node.port = free_port(self._host, self._port_base + node.slot if self._port_base else 0,
                              taken)
        node.ops_port = free_port(self._host,
                                  self._ops_base + node.slot if self._ops_base else 0,
                                  taken | {node.port})
        out: IO[bytes] | int
        if self._log_dir is not None:
            out = (self._log_dir / f"{node.id}.log").open("ab")
        else:
            out = sys.stderr.fileno()  # never stdout: serve prints its URL there
        try:
            # The node ends with this process however it ends (ops.lifeline).
            node.proc = subprocess.Popen(self._argv(node, t), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         env=lifeline.child_env())
        except OSError as exc:
            raise ProviderError(f"cannot start node {node.id}: {exc.strerror or exc}") from exc
        finally:
            if not isinstance(out, int):
                out.close()
        node.state = "starting"
        node.started_at = self._clock()
        log.info("started %s (pid %d) on port %d, ops %d", node.id, node.proc.pid, node.port,
                 node.ops_port)

    async def scale(self, pool: str, desired: int) -> str:
        template = self._templates.get(pool)
        if template is None:
            raise ProviderError(f"no node template for pool '{pool}'")
        desired = max(0, min(desired, template.max_replicas))
        active = self._active(pool)
        if desired > len(active):
            started = []
            used = {n.slot for n in self.nodes if n.pool == pool}
            for _ in range(desired - len(active)):
                slot = next(i for i in range(len(used) + 1) if i not in used)
                used.add(slot)
                node = LocalNode(id=self._node_id(pool, slot), pool=pool, slot=slot)
                self._spawn(node)  # raises ProviderError: the loop retries with back-off
                self.nodes.append(node)
                started.append(node.id)
            return f"started {', '.join(started)}"
        if desired < len(active):
            order = {"restarting": 0, "starting": 1, "ready": 2}
            victims = sorted(active, key=lambda n: (order[n.state], -n.started_at))
            victims = victims[:len(active) - desired]
            for node in victims:
                await self._drain(node)
            return f"draining {', '.join(n.id for n in victims)}"
        return "no change"

    def _node_id(self, pool: str, slot: int) -> str:
        pools = list(self._templates)
        if len(pools) == 1:
            return f"{self._prefix}-{slot}"
        return f"{self._prefix}-{pools.index(pool)}-{slot}"

    async def _drain(self, node: LocalNode) -> None:
        node.state = "draining"
        node.kill_at = self._clock() + self._drain_timeout + 5.0
        # Out of rotation first: the proxy sends it nothing new while it finishes its work.
        await self._drainer.deregister(node.id)
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
        log.info("draining %s", node.id)

    async def reconcile(self, now: float) -> list[str]:
        events: list[str] = []
        for node in list(self.nodes):
            alive = node.proc is not None and node.proc.poll() is None
            if node.state == "draining":
                if not alive:
                    self.nodes.remove(node)
                    events.append(f"{node.id} stopped")
                elif now >= node.kill_at and node.proc is not None:
                    _kill(node.proc)
                    events.append(f"{node.id} did not drain in time: killed")
                continue
            if node.state == "restarting":
                if now >= node.next_start:
                    try:
                        self._spawn(node)
                        events.append(f"{node.id} restarted (attempt {node.restarts})")
                    except ProviderError as exc:
                        self._crashed(node, now, events, exc.message)
                continue
            if not alive:
                code = node.proc.returncode if node.proc else None
                self._crashed(node, now, events, f"exited with code {code}")
                continue
            if node.state == "starting" and await self._healthy(node):
                node.state = "ready"
                node.ready_at = now
                events.append(f"{node.id} ready after {now - node.started_at:.1f}s")
            elif node.state == "ready" and node.restarts and now - node.ready_at > HEALTHY_RESET_S:
                node.restarts = 0
        return events

    def _crashed(self, node: LocalNode, now: float, events: list[str], why: str) -> None:
        node.restarts += 1
        delay = min(60.0, 2.0 ** min(node.restarts - 1, 6))
        node.state = "restarting"
        node.next_start = now + delay
        events.append(f"{node.id} {why}; restarting in {delay:.0f}s (crash #{node.restarts})")

    async def _healthy(self, node: LocalNode) -> bool:
        try:
            resp = await self._client.request(self._host, node.ops_port, "GET", "/health",
                                              connect_timeout=0.5, header_timeout=1.0)
            await resp.read()
        except InfernoError:
            return False
        return resp.status == 200

    async def close(self) -> None:
        for node in self.nodes:
            if node.state != "draining":
                await self._drain(node)
        deadline = time.monotonic() + self._drain_timeout + 5.0
        procs = [n.proc for n in self.nodes if n.proc is not None]
        # Poll, not wait(): the event loop keeps serving ops requests while nodes drain.
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        for p in procs:
            if p.poll() is None:
                _kill(p)
                await asyncio.to_thread(p.wait)
        self.nodes.clear()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
