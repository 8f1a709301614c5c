"""Fastest time to first token (EWMA per node).

Scores ``(best + floor) / (ewma + floor)``: the ``floor`` (20 ms by default) makes
differences far below it count for nothing, so jitter between equally fast nodes
(1.0 vs 1.3 ms) cannot starve one of them, while real differences (100 ms vs 1 s) still
dominate. Unmeasured nodes score as well as the best one, so new nodes get explored.
"""

from __future__ import annotations

from collections.abc import Sequence

from inferno.proxy.pool import Node
from inferno.proxy.routing.base import RouteContext


class Latency:
    name = "latency"

    def __init__(self, floor: float = 0.02, **_: object) -> None:
        self._floor = float(floor)

    def score(self, nodes: Sequence[Node], ctx: RouteContext) -> list[float]:
        measured = [n.ewma_ttft for n in nodes if n.ewma_ttft > 0]
        if not measured:
            return [1.0] * len(nodes)
        best = min(measured) + self._floor
        return [best / (n.ewma_ttft + self._floor) if n.ewma_ttft > 0 else 1.0 for n in nodes]
