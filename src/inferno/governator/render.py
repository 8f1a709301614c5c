"""``inferno governator status``: the state endpoint as tables a person can scan."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from inferno.net import HttpClient, get_json


def fetch_state(host: str, port: int, timeout: float = 3.0) -> dict[str, Any] | None:
    # A sync CLI command: the own client under asyncio.run, not httpx2 (the optional
    # `remote` extra, which a core command must not need) nor a third client (urllib).
    async def fetch() -> Any:
        client = HttpClient()
        try:
            return await get_json(client, host, port, "/governator/state", within=timeout)
        finally:
            await client.aclose()

    data = asyncio.run(fetch())
    return data if isinstance(data, dict) else None


def _num(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    return f"{v:.2f}{unit}" if isinstance(v, float) else f"{v}{unit}"


def _ago(at: float | None, now: float) -> str:
    return "-" if at is None else f"{max(0.0, now - at):.0f}s ago"


def print_state(state: dict[str, Any], console: Console | None = None) -> None:
    # Piped output would otherwise be squeezed into 80 columns.
    console = console or Console(width=None if Console().is_terminal else 140)
    now = float(state.get("at") or time.time())
    fleet = Table(title=f"Governator {state.get('id', '')} ({state.get('state', '?')})")
    for col in ("pool", "node type", "$/h", "$/1M tok", "nodes", "min..max", "panic"):
        fleet.add_column(col)
    signals = Table(title="Signals vs targets")
    for col in ("pool", "ready", "starting", "in flight", "queued", "req/s", "tok/s",
                "queue wait p95", "TTFT p95", "per node"):
        signals.add_column(col)
    nodes = Table(title="Nodes")
    for col in ("pool", "node", "state", "ops"):
        nodes.add_column(col)
    for p in state.get("pools", []):
        t = p.get("targets", {})
        sig = p.get("signals") or {}
        fleet.add_row(p["pool"], p["node_type"], _num(p.get("usd_per_hour")),
                      _num(p.get("usd_per_1m_tokens")), str(len(p.get("nodes", []))),
                      f"{p['min_replicas']}..{p['max_replicas']}",
                      "[red]yes[/red]" if p.get("panic") else "no")
        signals.add_row(
            p["pool"], _num(sig.get("ready")), _num(sig.get("starting")),
            _num(sig.get("in_flight")), _num(sig.get("queued")), _num(sig.get("request_rate")),
            _num(sig.get("tokens_per_second")),
            f"{_num(sig.get('queue_wait_p95_s'), 's')} / {t.get('queue_wait_p95_s')}s",
            f"{_num(sig.get('ttft_p95_s'), 's')} / {t.get('ttft_p95_s')}s",
            f"target {t.get('in_flight_per_node') or 'capacity'}")
        for n in p.get("nodes", []):
            nodes.add_row(p["pool"], n["id"], n["state"], n["address"])
    decisions = Table(title="Last decisions (newest first)")
    for col in ("when", "pool", "action", "nodes", "reason", "outcome"):
        decisions.add_column(col, overflow="fold")
    shown = [d for d in state.get("decisions", []) if d.get("action") != "hold"][:10]
    latest = {d["pool"]: d for d in reversed(state.get("decisions", []))}
    for d in [*shown, *(d for d in latest.values() if d not in shown)][:12]:
        decisions.add_row(_ago(d.get("at"), now), d["pool"], d["action"],
                          f"{d['current']} -> {d['desired']}", d["reason"], d["outcome"])
    for table in (fleet, signals, nodes, decisions):
        console.print(table)
    store = state.get("store")
    if store:
        console.print(f"Store: {store.get('samples_written', 0)} samples and "
                      f"{store.get('decisions_written', 0)} decisions written, "
                      f"{store.get('backlog', 0)} waiting, {store.get('dropped', 0)} dropped, "
                      f"{store.get('write_errors', 0)} write errors")
