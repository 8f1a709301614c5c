"""The proxy's built-in alert rules, over its live statistics and pool (no Prometheus).

- ``high_error_rate``: the share of failed requests over the last 5 minutes passes
  ``alert_error_rate`` (with at least ``alert_min_requests`` requests);
- ``ttft_slow``: TTFT p95 over the last 5 minutes passes ``alert_ttft_p95_s``;
- ``node_ejected``: a node's breaker is open or it fails its health checks;
- ``no_healthy_node``: a model some node serves has no node that may take requests;
- ``spend_budget``: today's spend (UTC) reaches ``alert_daily_budget_usd``.
"""

from __future__ import annotations

import time

from inferno.core.config import ProxySettings
from inferno.proxy.alerts import Rule
from inferno.proxy.observe import LiveStats
from inferno.proxy.pool import Pool

WINDOW_S = 300


def build_rules(s: ProxySettings, pool: Pool, stats: LiveStats) -> list[Rule]:
    def error_rate() -> list[tuple[str, str]]:
        p = stats.summary(WINDOW_S)
        if p["requests"] >= s.alert_min_requests and p["error_rate"] > s.alert_error_rate:
            return [("proxy", f"{100 * p['error_rate']:.1f}% of {p['requests']} requests "
                              f"failed in the last 5 min (threshold "
                              f"{100 * s.alert_error_rate:.1f}%)")]
        return []

    def ttft() -> list[tuple[str, str]]:
        p = stats.summary(WINDOW_S)
        p95 = p["ttft_p95"]
        if p95 is not None and p["requests"] >= s.alert_min_requests \
                and p95 > s.alert_ttft_p95_s:
            return [("proxy", f"TTFT p95 {1000 * p95:.0f} ms over the last 5 min "
                              f"(target {1000 * s.alert_ttft_p95_s:.0f} ms)")]
        return []

    def ejected() -> list[tuple[str, str]]:
        now = time.monotonic()
        out = []
        for n in pool.snapshot.nodes:
            if n.breaker.state == "open" and now < n.breaker.open_until:
                out.append((n.id, f"breaker open (ejection #{n.breaker.ejections}) after "
                                  f"{n.last_error or 'failures'}"))
            elif not n.healthy:
                out.append((n.id, "failing its health checks"))
        return out

    def no_healthy() -> list[tuple[str, str]]:
        now = time.monotonic()
        snap = pool.snapshot
        ok = {m for n in snap.nodes if n.state == "ready" and n.routable(now) for m in n.models}
        return [(m, "no node can serve it") for m in sorted(snap.models - ok)]

    def budget() -> list[tuple[str, str]]:
        limit = s.alert_daily_budget_usd
        spent = stats.spent_today()
        if limit is not None and spent >= limit:
            return [("proxy", f"${spent:.2f} spent today (UTC), budget ${limit:.2f}")]
        return []

    return [Rule("high_error_rate", "Error rate over threshold", error_rate, "critical"),
            Rule("ttft_slow", "TTFT p95 over target", ttft),
            Rule("node_ejected", "Node ejected", ejected),
            Rule("no_healthy_node", "No healthy node for a model", no_healthy, "critical"),
            Rule("spend_budget", "Daily spend budget reached", budget)]
