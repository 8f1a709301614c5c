"""The measured goal: a bursty trace replayed through a real proxy and local nodes.

A proxy process and the governator (local provider, in this process) start from one
node; :func:`bursty_trace` is replayed open-loop; a sampler records the fleet twice a
second. The report gives the scale-up reaction time, when TTFT p95 (queue wait plus a
small prefill) came back under target after the new nodes were ready, when the fleet was
back at its minimum, SLO attainment per window, and node-seconds against a static fleet
sized for the peak and an oracle that knows the trace (minimum outside the burst, the
peak during it, nodes ready the instant they are needed).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from inferno.governator.loop import Governator
from inferno.governator.providers.base import NodeTemplate
from inferno.governator.providers.local import LocalProvider
from inferno.governator.replay import Outcome, bursty_trace, replay
from inferno.governator.signals import percentile
from inferno.governator.spec import DEFAULT_PRICES, Policy, PoolSpec, Targets
from inferno.governator.store import MemoryStore
from inferno.net import HttpClient
from inferno.ops import lifeline

MODEL = "smollm2-135m"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class BurstReport:
    target_wait_s: float
    window_s: float
    scale_up_after_s: float | None = None  # burst start -> first scale-up decision
    new_ready_after_s: float | None = None  # burst start -> a second node ready
    recovered_after_s: float | None = None  # new node ready -> TTFT p95 under target
    back_to_min_after_s: float | None = None  # burst end -> fleet at its minimum
    peak_nodes: int = 1
    windows_total: int = 0
    windows_ok: int = 0
    node_seconds: float = 0.0
    static_node_seconds: float = 0.0
    oracle_node_seconds: float = 0.0
    requests: int = 0
    failed: int = 0
    # Why requests failed: HTTP status -> count (0: no answer, e.g. a refused connection).
    failures: dict[int, int] = field(default_factory=dict)
    ttft_p95_s: float | None = None
    decisions: list[str] = field(default_factory=list)

    @property
    def attainment(self) -> float:
        return self.windows_ok / self.windows_total if self.windows_total else 0.0

    @property
    def node_seconds_ratio(self) -> float:
        return self.node_seconds / self.static_node_seconds if self.static_node_seconds else 0.0


def _start_proxy(tmp: Path, port: int, ops: int) -> subprocess.Popen[bytes]:
    # Requests wait in the proxy's queue up to 60 s instead of its 10 s default: the
    # experiment measures how fast the fleet catches up with a backlog, and refusing
    # requests at 10 s would cap the very queue wait the governator is meant to cure (and
    # turn a slower machine's longer wait into failures).
    env = lifeline.child_env({**os.environ, "INFERNO_PROXY_QUEUE_WAIT": "60"})
    with (tmp / "proxy.log").open("ab") as out:
        # One worker: the nodes this experiment starts need the machine's cores.
        return subprocess.Popen([sys.executable, "-m", "inferno", "proxy", "--port", str(port),
                                 "--ops-port", str(ops), "--workers", "1"], stdout=out,
                                stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)


async def _wait(cond: object, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if callable(cond) and cond():
            return True
        await asyncio.sleep(0.1)
    return False


async def burst_experiment(tmp: Path, *, base_rps: float, factor: float, before_s: float,
                           burst_s: float, after_s: float, settle_s: float,
                           max_replicas: int = 4, parallel: int = 2, threads: int = 1,
                           target_wait_s: float = 2.0, window_s: float = 10.0,
                           completion_tokens: int = 24,
                           engine: str = "llamacpp", pool: PoolSpec | None = None
                           ) -> BurstReport:
    port, ops = _free_port(), _free_port()
    proxy = _start_proxy(tmp, port, ops)
    spec = pool or PoolSpec(
        model=MODEL, node_types=["local-cpu"], min_replicas=1, max_replicas=max_replicas,
        targets=Targets(queue_wait_p95_s=target_wait_s, in_flight_per_node=parallel),
        stable_window_s=30, panic_window_s=4, scale_up_cooldown_s=2,
        scale_down_delay_s=10, scale_down_cooldown_s=5)
    client = HttpClient()
    provider = LocalProvider({spec.name: NodeTemplate(model=spec.model, engine=engine,
                                                      threads=threads, parallel=parallel,
                                                      n_ctx=1024,
                                                      max_replicas=spec.max_replicas)},
                             proxy_host="127.0.0.1", proxy_port=ops, client=client,
                             drain_timeout=20, log_dir=tmp)
    gov = Governator(Policy(pools=[spec]), DEFAULT_PRICES, provider, MemoryStore(), client,
                     proxy_host="127.0.0.1", proxy_port=ops, interval=1.0)
    report = BurstReport(target_wait_s=target_wait_s, window_s=window_s)
    fleet: list[tuple[float, int, int]] = []  # (t since start, processes alive, ready)
    try:
        await gov.start()
        ready = await _wait(lambda: sum(n.state == "ready" for n in provider.nodes) >= 1, 120)
        assert ready, "the first node did not become ready"
        await asyncio.sleep(2.0)  # its registration reaches the proxy
        rows = bursty_trace(base_rps=base_rps, burst_factor=factor, before_s=before_s,
                            burst_s=burst_s, after_s=after_s, model=spec.model,
                            completion_tokens=completion_tokens)
        t0 = time.monotonic()
        wall0 = time.time()

        async def sample() -> None:
            while True:
                fleet.append((time.monotonic() - t0, len(provider.nodes),
                              sum(n.state == "ready" for n in provider.nodes)))
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample())
        outcomes = await replay(rows, "127.0.0.1", port, t0=t0)
        end_burst = before_s + burst_s
        await _wait(lambda: len(provider.nodes) <= spec.min_replicas
                    and time.monotonic() - t0 > before_s + burst_s + after_s, settle_s)
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        fleet.append((time.monotonic() - t0, len(provider.nodes),
                      sum(n.state == "ready" for n in provider.nodes)))
        total = time.monotonic() - t0
        _fill(report, outcomes, fleet, gov, wall0, before_s, end_burst, total, spec)
    finally:
        await gov.drain()
        proxy.terminate()
        try:
            proxy.wait(15)
        except subprocess.TimeoutExpired:
            proxy.kill()
    return report


def _fill(r: BurstReport, outcomes: list[Outcome], fleet: list[tuple[float, int, int]],
          gov: Governator, wall0: float, burst_at: float, end_burst: float, total: float,
          spec: PoolSpec) -> None:
    ups = [d for d in gov.store_decisions if d.action == "up" and d.at - wall0 >= burst_at]
    r.decisions = [f"t={d.at - wall0:6.1f}s {d.action} {d.current}->{d.desired}: {d.reason} "
                   f"=> {d.outcome}" for d in gov.store_decisions if d.action != "hold"]
    if ups:
        r.scale_up_after_s = ups[0].at - wall0 - burst_at
    ready_more = [t for t, _, ready in fleet if t >= burst_at and ready > spec.min_replicas]
    new_ready = ready_more[0] if ready_more else None
    if new_ready is not None:
        r.new_ready_after_s = new_ready - burst_at
        r.recovered_after_s = _recovered(outcomes, new_ready, r.target_wait_s)
    at_min = [t for t, alive, _ in fleet if t >= end_burst and alive <= spec.min_replicas]
    r.back_to_min_after_s = at_min[0] - end_burst if at_min else None
    r.peak_nodes = max((alive for _, alive, _ in fleet), default=1)
    # Node-seconds: the integral of live node processes (starting and draining included).
    r.node_seconds = sum(0.5 * alive for _, alive, _ in fleet)
    r.static_node_seconds = r.peak_nodes * total
    r.oracle_node_seconds = (spec.min_replicas * (total - (end_burst - burst_at))
                             + r.peak_nodes * (end_burst - burst_at))
    r.requests = len(outcomes)
    r.failed = sum(1 for o in outcomes if o.ttft_s is None)
    for o in outcomes:
        if o.ttft_s is None:
            r.failures[o.status] = r.failures.get(o.status, 0) + 1
    r.ttft_p95_s = percentile([o.ttft_s for o in outcomes if o.ttft_s is not None], 0.95)
    windows: dict[int, list[float]] = {}
    for o in outcomes:
        windows.setdefault(int(o.sent_at // r.window_s), []).append(
            o.ttft_s if o.ttft_s is not None else float("inf"))
    r.windows_total = len(windows)
    r.windows_ok = sum(1 for ws in windows.values()
                       if (percentile(ws, 0.95) or 0.0) <= r.target_wait_s)


def _recovered(outcomes: list[Outcome], since: float, target: float,
               span: float = 5.0) -> float | None:
    """First moment after ``since`` from which requests sent in the next ``span`` seconds
    have TTFT p95 under target."""
    t = since
    last = max((o.sent_at for o in outcomes), default=since)
    while t <= last:
        ws = [o.ttft_s if o.ttft_s is not None else float("inf")
              for o in outcomes if t <= o.sent_at < t + span]
        if ws and (percentile(ws, 0.95) or 0.0) <= target:
            return t - since
        t += 1.0
    return None
