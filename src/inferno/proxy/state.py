"""``GET /router/state`` (ops port): what the router knows about every node, and why.

For a person debugging routing: health, breaker state, load, latency, ejections and the
last error per node; scorer timings per profile; the retry budget and admission queue.
"""

from __future__ import annotations

import time
from typing import Any

from inferno.net import Request, Response
from inferno.proxy.admission import Admission
from inferno.proxy.pool import Node, Pool
from inferno.proxy.retry import RetryBudget
from inferno.proxy.router import Router


class RouterState:
    def __init__(self, pool: Pool, router: Router, budget: RetryBudget,
                 admission: Admission) -> None:
        self._pool = pool
        self.router = router  # replaced when routing changes at run time
        self._budget = budget
        self._admission = admission

    async def get(self, req: Request) -> Response:
        return Response.json(self.snapshot())

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "nodes": [_node(n, now, self._admission.cap(n)) for n in self._pool.snapshot.nodes],
            "profiles": {
                name: {
                    "filters": [f.name for f in p.filters],
                    "scorers": [{"name": s.name, "weight": w,
                                 "calls": p.stats[s.name].calls,
                                 "mean_us": round(1e6 * p.stats[s.name].seconds
                                                  / max(p.stats[s.name].calls, 1), 2)}
                                for s, w in p.scorers],
                    "picker": p.picker.name,
                    "sample": p.sample,
                } for name, p in self.router.profiles.items()},
            "default_profile": self.router.default.name,
            "routing": {"calls": self.router.calls, "seconds": self.router.seconds,
                        "mean_us": round(1e6 * self.router.seconds
                                         / max(self.router.calls, 1), 2)},
            "canary": self.router.config.canary,
            "retry_budget": self._budget.state(),
            "admission": {"queued": self._admission.queued,
                          "rejected": self._admission.rejected},
        }


def _node(n: Node, now: float, cap: int) -> dict[str, Any]:
    b = n.breaker
    return {
        "id": n.id, "address": n.address, "models": sorted(n.models), "state": n.state,
        "healthy": n.healthy, "routable": n.routable(now),
        "breaker": b.state, "ejections": b.ejections,
        "ejected_for_s": round(max(0.0, b.open_until - now), 2) if b.state == "open" else 0.0,
        "consecutive_failures": b.failures, "in_flight": n.outstanding, "cap": cap,
        "queue_depth": n.queue_depth, "ewma_ttft_ms": round(n.ewma_ttft * 1000, 2),
        "requests": n.requests, "failures": n.failures, "last_error": n.last_error,
        "lease_expires_in_s": round(n.expires_at - now, 2),
    }
