"""Medians per cell, the results table, and the gateway targets checked against it."""

from __future__ import annotations

import time
from typing import Any

import load


def cell(scenario: str, conns: int, runs: dict[str, list[load.Run]]) -> dict[str, Any]:
    out: dict[str, Any] = {"scenario": scenario, "conns": conns, "targets": {}}
    for t, rs in runs.items():
        cpu = [r.cpu_ms_per_req for r in rs if r.cpu_ms_per_req is not None]
        out["targets"][t] = {
            "rps": load.median([r.rps for r in rs]),
            "p50_ms": load.median([r.p50_ms for r in rs]),
            "p99_ms": load.median([r.p99_ms for r in rs]),
            "cpu_ms": load.median(cpu) if cpu else None,
            "errors": sum(r.errors for r in rs),
            "requests": sum(r.requests for r in rs),
        }
    direct = out["targets"].get("direct")
    for t, v in out["targets"].items():
        if direct and t != "direct":
            v["added_p50_ms"] = v["p50_ms"] - direct["p50_ms"]
            v["added_p99_ms"] = v["p99_ms"] - direct["p99_ms"]
            v["rps_vs_direct"] = v["rps"] / direct["rps"] if direct["rps"] else None
    return out


def cell_line(c: dict[str, Any]) -> str:
    parts = [f"{c['scenario']:>15} c={c['conns']:<3}"]
    for t, v in c["targets"].items():
        cpu = f" {v['cpu_ms']:.3f}ms" if v["cpu_ms"] is not None else ""
        parts.append(f"{t} {v['rps']:.0f}/s p50 {v['p50_ms']:.2f} p99 {v['p99_ms']:.2f}{cpu}")
    return " | ".join(parts)


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if x is None or x != x else fmt.format(x)


def render(res: dict[str, Any]) -> str:
    lines = [
        f"# Gateway benchmark ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"Machine: {res['machine']}. wrk, {res['rounds']} interleaved rounds x "
        f"{res['seconds']:g} s per cell, medians. inferno proxy workers: {res['workers']}; "
        "`inferno`: default features on (API-key auth, per-key rpm/tpm limits, request log "
        "to SQLite, Prometheus metrics, routing profile least-outstanding); "
        "`inferno-bare`: the same proxy with auth and the database off. CPU ms/req: "
        "the gateway's user+system time (every process and thread) / requests.",
        "",
        "| scenario | clients | gateway | req/s | vs direct | p50 ms | p99 ms | "
        "added p50 ms | added p99 ms | CPU ms/req | errors |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in res.get("cells", []):
        for t, v in c["targets"].items():
            lines.append(
                f"| {c['scenario']} | {c['conns']} | {t} | {v['rps']:.0f} | "
                f"{_f(v.get('rps_vs_direct'))} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | "
                f"{_f(v.get('added_p50_ms'))} | {_f(v.get('added_p99_ms'))} | "
                f"{_f(v['cpu_ms'], '{:.3f}')} | {v['errors']} |"
            )
    ttfb = res.get("ttfb") or {}
    if ttfb:
        d = ttfb.get("direct", {}).get("ttfc_p50_ms", float("nan"))
        lines += [
            "",
            "Streaming, 6 events 20 ms apart (chunked), 1 client: time to first chunk "
            "and first-to-last event spread (≈100 ms when relayed as they arrive). The "
            "targets take turns in a shuffled order, so each gateway has been idle for "
            "0.1-0.5 s before each request: this is the time to first chunk of a proxy "
            "woken from idle. Sequential: each request sent as the previous stream "
            "through the same gateway ends (idle only between its 20 ms-apart events).",
            "",
            "| gateway | TTFC p50 ms | TTFC p99 ms | added TTFC p50 ms | spread p50 ms "
            "| sequential TTFC p50 ms | added sequential p50 ms |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        ds = ttfb.get("direct", {}).get("ttfc_seq_p50_ms", float("nan"))
        for t, v in ttfb.items():
            added = v["ttfc_p50_ms"] - d if t != "direct" else None
            sq = v.get("ttfc_seq_p50_ms", float("nan"))
            lines.append(
                f"| {t} | {v['ttfc_p50_ms']:.2f} | {v['ttfc_p99_ms']:.2f} | "
                f"{_f(added)} | {v['spread_p50_ms']:.1f} | {sq:.2f} | "
                f"{_f(sq - ds if t != 'direct' else None)} |"
            )
    h = res.get("health")
    if h:
        lines += [
            "",
            f"Ops `/health` while the proxy is saturated (64 clients, "
            f"{h['proxy_rps']:.0f} req/s): p50 {h['health_p50_ms']:.2f} ms, p99 "
            f"{h['health_p99_ms']:.2f} ms over {h['health_n']} probes, "
            f"{h['health_failures']} failures. The same probe on nginx at the same "
            f"time (this machine's floor): p50 {h.get('floor_p50_ms', float('nan')):.2f}"
            f" ms, p99 {h.get('floor_p99_ms', float('nan')):.2f} ms.",
        ]
    s = res.get("soak")
    if s:
        lines += [
            "",
            f"Soak: {s['requests']:,} requests of continuous load at 16 clients per "
            "proxy: RSS (MB) and inferno's request-log backlog (rows queued, not yet in "
            "SQLite).",
            "",
            "| gateway | requests | RSS MB | log backlog rows |",
            "|---|---:|---:|---:|",
        ]
        for name in ("inferno", "inferno-bare"):
            for n, mb, backlog in (s.get(name) or {}).get("samples", []):
                count = f"{n:,}" if isinstance(n, int) else n
                lines.append(f"| {name} | {count} | {mb:.1f} | {_f(backlog, '{:.0f}')} |")
    lines += ["", *targets(res)]
    return "\n".join(lines) + "\n"


def _get(res: dict[str, Any], scen: str, conns: int) -> dict[str, Any] | None:
    for c in res.get("cells", []):
        if c["scenario"] == scen and c["conns"] == conns:
            return dict(c["targets"])
    return None


def targets(res: dict[str, Any]) -> list[str]:
    out = ["Targets:", ""]

    def check(name: str, value: float | None, limit: float, fmt: str, le: bool = True) -> None:
        if value is None or value != value:
            out.append(f"- {name}: not measured")
            return
        ok = value <= limit if le else value >= limit
        out.append(
            f"- {name}: {fmt.format(value)} ({'ok' if ok else 'MISSED'}, target "
            f"{'≤' if le else '≥'} {fmt.format(limit)})"
        )

    fast16 = _get(res, "fast JSON", 16) or {}
    fast1 = _get(res, "fast JSON", 1) or {}
    slow64 = _get(res, "50 ms upstream", 64) or {}
    inf = "inferno"
    check(
        "CPU per proxied request, fast upstream, 16 clients",
        (fast16.get(inf) or {}).get("cpu_ms"),
        0.25,
        "{:.3f} ms",
    )
    check(
        "added latency p50, 1 client", (fast1.get(inf) or {}).get("added_p50_ms"), 0.4, "{:.2f} ms"
    )
    check(
        "added latency p99, 16 clients",
        (fast16.get(inf) or {}).get("added_p99_ms"),
        2.0,
        "{:.2f} ms",
    )
    check(
        "throughput vs direct, 50 ms upstream, 64 clients",
        (slow64.get(inf) or {}).get("rps_vs_direct"),
        0.97,
        "{:.3f}",
        le=False,
    )
    sse1 = _get(res, "fast SSE", 1) or {}
    check(
        "streaming: added time to first chunk p50, proxy busy (fast SSE, 1 client, wrk: the "
        "answer is one chunk, so first chunk = whole answer)",
        (sse1.get(inf) or {}).get("added_p50_ms"),
        0.5,
        "{:.2f} ms",
    )
    ttfb = res.get("ttfb") or {}
    if inf in ttfb and "direct" in ttfb:
        check(
            "streaming: added time to first chunk p50, proxy idle 0.1-0.5 s before each "
            "request (trickle)",
            ttfb[inf]["ttfc_p50_ms"] - ttfb["direct"]["ttfc_p50_ms"],
            0.5,
            "{:.2f} ms",
        )
        if "ttfc_seq_p50_ms" in ttfb[inf]:
            check(
                "streaming: added time to first chunk p50, sequential requests (each sent "
                "as the previous stream ends; trickle)",
                ttfb[inf]["ttfc_seq_p50_ms"] - ttfb["direct"]["ttfc_seq_p50_ms"],
                0.5,
                "{:.2f} ms",
            )
        check(
            "streaming: first-to-last event spread (relayed as they arrive, ≈100 ms)",
            ttfb[inf]["spread_p50_ms"],
            90.0,
            "{:.1f} ms",
            le=False,
        )
    s = res.get("soak")
    if s and s.get("inferno"):
        loaded = [r for r in s["inferno"]["samples"] if isinstance(r[0], int)]
        check("RSS at the end of the soak", loaded[-1][1], 150.0, "{:.1f} MB")
        first = loaded[1][1] if len(loaded) > 1 else loaded[0][1]
        check(
            "RSS growth from the first quarter to the end of the soak",
            loaded[-1][1] - first,
            10.0,
            "{:.1f} MB",
        )
    h = res.get("health")
    if h:
        check("ops /health p99 while saturated", h["health_p99_ms"], 5.0, "{:.2f} ms")
    if fast16.get("aiohttp") and fast16.get(inf) and fast16[inf]["cpu_ms"]:
        ratio = fast16["aiohttp"]["cpu_ms"] / fast16[inf]["cpu_ms"]
        out.append(
            f"- CPU per request vs aiohttp pass-through (16 clients): inferno with every "
            f"default feature uses {1 / ratio:.2f}x the pass-through's"
        )
    return out
