"""Passive outlier detection: every attempt's outcome feeds the node's circuit breaker.

A good answer also counts as evidence of health, so active checks leave the node alone
while it carries traffic. Connect failures, resets, timeouts and 5xx count against a
node; 4xx do not (the client's fault), nor does 429 (busy is not broken). Passive
evidence may never eject more than ``max_ejected_percent`` of the pool (at least one
node), so a fault in the proxy's own network cannot empty the pool; active health
checks are not bound by that cap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from inferno.proxy.pool import Node, Pool

log = logging.getLogger("inferno.proxy.health")


class PassiveHealth:
    def __init__(self, pool: Pool, *, max_ejected_percent: float,
                 on_eject: Callable[[Node], None] | None = None,
                 on_readmit: Callable[[Node], None] | None = None,
                 on_probe: Callable[[Node], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._pool = pool
        self._pct = max_ejected_percent
        self._on_eject = on_eject
        self._on_readmit = on_readmit
        self._on_probe = on_probe
        self._clock = clock
        self.ejections = 0

    def success(self, node: Node) -> None:
        now = self._clock()
        node.evidence_at = now  # a good answer is health evidence: no active probe needed
        if node.breaker.success(now):
            log.info("node %s re-admitted: its probe request succeeded", node.id)
            if self._on_readmit is not None:
                self._on_readmit(node)

    def probing(self, node: Node) -> None:
        """The node's breaker went half-open: one probe request is on its way to it."""
        if self._on_probe is not None:
            self._on_probe(node)

    def failure(self, node: Node, reason: str) -> None:
        node.failures += 1
        node.last_error = reason
        now = self._clock()
        if node.breaker.failure(now, self._may_eject()):
            self.ejections += 1
            wait = node.breaker.open_until - now
            log.warning("node %s ejected for %.1f s after %s (ejection #%d)", node.id, wait,
                        reason, node.breaker.ejections)
            if self._on_eject is not None:
                self._on_eject(node)

    def _may_eject(self) -> bool:
        nodes = self._pool.snapshot.nodes
        ejected = sum(1 for n in nodes if n.breaker.state != "closed")
        return ejected + 1 <= max(1, int(len(nodes) * self._pct / 100))
