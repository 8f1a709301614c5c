"""``inferno governator plan``: replay a request trace against candidate fleets.

Each candidate is simulated in 0.1 s steps with a fleet-wide FIFO queue (what the
proxy's least-outstanding routing approximates): a request waits for a free sequence
slot on a ready node, then takes ``prompt / prefill_speed + completion / per-sequence
speed`` seconds. Candidates: static fleets of 1..N nodes of each node type, the scale
policy itself driving each node type (the same pure ``decide()`` the loop uses, with
start-up delays), and each cloud API model (priced per token, no queue).
A minute is *within target* when the p95 queue wait of the requests that arrived in it
is within the pool's target; a fleet *meets the targets* when >= 95 % of minutes are.
"""

from __future__ import annotations

import csv
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from inferno.core.errors import ConfigError
from inferno.governator.cost import api_usd
from inferno.governator.policy import Decision, PoolState, decide
from inferno.governator.signals import PoolSignals, percentile
from inferno.governator.spec import (
    NodeType,
    Policy,
    PoolSpec,
    PriceList,
    check_node_types,
    load_policy,
    load_prices,
)

STEP = 0.1
# What drives an autoscaled fleet: ``decide`` itself, or another policy with its
# signature (``bench/autoscale_shapes.py`` measures oracle bounds with it).
Decider = Callable[[PoolSpec, str, NodeType, PoolSignals, PoolState],
                   tuple[Decision, PoolState]]


@dataclass(frozen=True, slots=True)
class TraceRow:
    ts: float
    model: str
    prompt_tokens: int
    completion_tokens: int


def load_trace(path: Path) -> list[TraceRow]:
    """CSV with a header (ts, model, prompt_tokens, completion_tokens) or JSONL."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read trace {path}: {exc.strerror}") from exc
    rows: list[TraceRow] = []
    try:
        if path.suffix in (".jsonl", ".json"):
            for line in text.splitlines():
                if line.strip():
                    d = orjson.loads(line)
                    rows.append(TraceRow(float(d["ts"]), str(d["model"]),
                                         int(d["prompt_tokens"]), int(d["completion_tokens"])))
        else:
            for i, d in enumerate(csv.DictReader(text.splitlines()), start=2):
                try:
                    rows.append(TraceRow(float(d["ts"]), d["model"], int(d["prompt_tokens"]),
                                         int(d["completion_tokens"])))
                except (KeyError, TypeError, ValueError) as exc:
                    raise ConfigError(f"{path}: line {i}: {exc!r}") from exc
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: invalid trace row: {exc!r}") from exc
    if not rows:
        raise ConfigError(f"{path}: the trace is empty")
    return sorted(rows, key=lambda r: r.ts)


@dataclass
class _Node:
    ready_at: float
    created: float
    slots: list[float] = field(default_factory=list)  # end times of running sequences
    draining: bool = False
    removed: float | None = None


@dataclass
class FleetResult:
    name: str
    attainment: float  # fraction of minutes within target
    wait_p95_s: float
    node_hours: float
    cost_usd: float
    usd_per_1m_tokens: float
    peak_nodes: int

    @property
    def meets(self) -> bool:
        return self.attainment >= 0.95


def simulate(rows: list[TraceRow], nt: NodeType, target_wait: float, *, nodes: int = 0,
             spec: PoolSpec | None = None, type_name: str = "node",
             decider: Decider = decide) -> tuple[
                 list[float], list[float], float, int]:
    """Returns (arrival times, queue waits, node-seconds, peak nodes)."""
    per_seq = nt.tokens_per_second / nt.capacity
    fleet = [_Node(ready_at=0.0, created=0.0) for _ in range(nodes)]
    if spec is not None:
        fleet = [_Node(ready_at=0.0, created=0.0) for _ in range(max(1, spec.min_replicas))]
    state = PoolState()
    queue: deque[tuple[float, TraceRow]] = deque()
    waits: list[float] = [math.nan] * len(rows)
    recent: deque[tuple[float, float]] = deque()
    arrived = dispatched = 0
    i, t, next_tick, last_tick = 0, 0.0, 0.0, 0.0
    end = rows[-1].ts
    index = {id(r): k for k, r in enumerate(rows)}
    peak = len(fleet)
    while i < len(rows) or queue or any(n.slots for n in fleet if n.removed is None):
        if t > end + 3600:
            break  # a fleet too small to ever drain its queue
        while i < len(rows) and rows[i].ts <= t:
            queue.append((rows[i].ts, rows[i]))
            i += 1
            arrived += 1
        for n in fleet:
            n.slots = [e for e in n.slots if e > t]
            if n.draining and not n.slots and n.removed is None:
                n.removed = t
        for n in fleet:
            if n.removed is not None or n.draining or n.ready_at > t:
                continue
            while queue and len(n.slots) < nt.capacity:
                since, row = queue.popleft()
                waits[index[id(row)]] = t - since
                recent.append((t, t - since))
                dispatched += 1
                n.slots.append(t + row.prompt_tokens / nt.prefill_tokens_per_second
                               + row.completion_tokens / per_seq)
        if spec is not None and t >= next_tick:
            next_tick, dt, last_tick = t + 1.0, max(t - last_tick, STEP), t
            while recent and t - recent[0][0] > 10:
                recent.popleft()
            live = [n for n in fleet if n.removed is None and not n.draining]
            head = t - queue[0][0] if queue else 0.0
            sig = PoolSignals(
                at=t, ready=sum(1 for n in live if n.ready_at <= t),
                starting=sum(1 for n in live if n.ready_at > t),
                in_flight=sum(len(n.slots) for n in live), queued=len(queue),
                request_rate=dispatched / dt, arrival_rate=arrived / dt, queue_wait_p95_s=max(
                    head, percentile([w for _, w in recent], 0.95) or 0.0))
            arrived = dispatched = 0
            decision, state = decider(spec, type_name, nt, sig, state)
            if decision.desired > len(live):
                fleet += [_Node(ready_at=t + nt.startup_s, created=t)
                          for _ in range(decision.desired - len(live))]
            elif decision.desired < len(live):
                for n in sorted(live, key=lambda n: (-n.ready_at, len(n.slots)))[
                        :len(live) - decision.desired]:
                    n.draining = True
            peak = max(peak, sum(1 for n in fleet if n.removed is None))
        t = round(t + STEP, 6)
    node_s = sum((n.removed if n.removed is not None else t) - n.created for n in fleet)
    return [r.ts for r in rows], waits, node_s, peak


def minute_attainment(arrivals: list[float], waits: list[float], target: float) -> float:
    minutes: dict[int, list[float]] = {}
    for a, w in zip(arrivals, waits, strict=True):
        minutes.setdefault(int(a // 60), []).append(math.inf if math.isnan(w) else w)
    ok = sum(1 for ws in minutes.values() if (percentile(ws, 0.95) or 0.0) <= target)
    return ok / len(minutes) if minutes else 1.0


def plan(rows: list[TraceRow], prices: PriceList, spec: PoolSpec,
         max_nodes: int = 8) -> list[FleetResult]:
    rows = [r for r in rows if r.model == spec.model] or rows
    tokens = sum(r.prompt_tokens + r.completion_tokens for r in rows)
    target = spec.targets.queue_wait_p95_s
    out: list[FleetResult] = []

    def result(name: str, nt: NodeType, sim: tuple[list[float], list[float], float, int]
               ) -> FleetResult:
        arrivals, waits, node_s, peak = sim
        hours = node_s / 3600
        cost = hours * nt.usd_per_hour
        finite = [w if not math.isnan(w) else math.inf for w in waits]
        return FleetResult(name, minute_attainment(arrivals, waits, target),
                           percentile(finite, 0.95) or 0.0, hours, cost,
                           cost / tokens * 1e6 if tokens else 0.0, peak)

    for name in spec.node_types:
        nt = prices.node_types[name]
        for n in range(1, max_nodes + 1):
            out.append(result(f"static {n} x {name}", nt, simulate(rows, nt, target, nodes=n)))
            if out[-1].attainment >= 0.999 and out[-1].wait_p95_s <= target / 4:
                break  # more nodes only cost more
        out.append(result(f"autoscaled {spec.min_replicas}..{spec.max_replicas} x {name}", nt,
                          simulate(rows, nt, target, spec=spec, type_name=name)))
    for name, api in prices.api_models.items():
        cost = sum(api_usd(api, r.prompt_tokens, r.completion_tokens) for r in rows)
        out.append(FleetResult(f"api {name}", 1.0, 0.0, 0.0, cost,
                               cost / tokens * 1e6 if tokens else 0.0, 0))
    return out


def default_policy_for(rows: list[TraceRow], prices: PriceList, prices_src: str) -> Policy:
    """One pool per model in the trace, every node type a candidate, default targets."""
    models = list(dict.fromkeys(r.model for r in rows))
    policy = Policy(pools=[PoolSpec(model=m, node_types=list(prices.node_types))
                           for m in models])
    check_node_types(policy, prices, "the default policy", prices_src)
    return policy


def run_plan(rows: list[TraceRow], prices_path: Path, policy_path: Path | None,
             max_nodes: int = 8, *, as_json: bool = False) -> list[FleetResult]:
    """Plan every pool of the policy (or one per model of the trace) and print the tables,
    or with ``as_json`` one JSON object per fleet row."""
    import sys

    from rich.console import Console
    from rich.table import Table

    prices = load_prices(prices_path)
    if policy_path is not None:
        policy = load_policy(policy_path, prices, prices_path)
    else:
        policy = default_policy_for(rows, prices, str(prices_path))
    # Piped output would otherwise be squeezed into 80 columns and wrap every fleet name.
    console = Console(width=None if Console().is_terminal else 140)
    results: list[FleetResult] = []
    for spec in policy.pools:
        res = plan(rows, prices, spec, max_nodes)
        results += res
        meeting = [r for r in res if r.meets]
        best = min(meeting, key=lambda r: r.cost_usd) if meeting else None
        if as_json:
            for r in res:
                sys.stdout.buffer.write(orjson.dumps(_row_json(spec, r, r is best)) + b"\n")
            continue
        pool_rows = [r for r in rows if r.model == spec.model] or rows
        span = pool_rows[-1].ts - pool_rows[0].ts
        table = Table(title=f"{spec.model}: {len(pool_rows)} requests over {span / 60:.1f} min, "
                      f"target queue wait p95 <= {spec.targets.queue_wait_p95_s:g}s")
        for col in ("fleet", "SLO minutes", "wait p95", "peak nodes", "node-hours", "cost $",
                    "$/1M tok", "meets"):
            table.add_column(col, justify="left" if col == "fleet" else "right",
                             no_wrap=True)
        for r in res:
            style = "bold green" if r is best else None
            table.add_row(r.name, f"{r.attainment:.0%}",
                          "inf" if math.isinf(r.wait_p95_s) else f"{r.wait_p95_s:.2f}s",
                          str(r.peak_nodes), f"{r.node_hours:.3f}", f"{r.cost_usd:.4f}",
                          f"{r.usd_per_1m_tokens:.3f}", "yes" if r.meets else "no", style=style)
        console.print(table)
        console.print(f"Cheapest fleet meeting the targets: [bold]{best.name}[/bold] "
                      f"(${best.cost_usd:.4f})" if best else
                      "[red]No candidate fleet meets the targets.[/red]")
    return results


def _row_json(spec: PoolSpec, r: FleetResult, cheapest: bool) -> dict[str, object]:
    return {"pool": spec.model, "fleet": r.name, "attainment": round(r.attainment, 4),
            "wait_p95_s": None if math.isinf(r.wait_p95_s) else round(r.wait_p95_s, 3),
            "peak_nodes": r.peak_nodes, "node_hours": round(r.node_hours, 4),
            "cost_usd": round(r.cost_usd, 6), "usd_per_1m_tokens": round(r.usd_per_1m_tokens, 4),
            "meets": r.meets, "cheapest_meeting": cheapest}
