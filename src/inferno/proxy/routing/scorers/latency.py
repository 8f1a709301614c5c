"""Fastest time to first token (EWMA per node). Unmeasured nodes score as well as the best
measured one, so new nodes get explored instead of starved."""

from __future__ import annotations

from collections.abc import Sequence

from inferno.proxy.pool import Node
from inferno.proxy.routing.base import RouteContext


class Latency:
    name = "latency"

    def __init__(self, **_: object) -> None:
        pass

    def score(self, nodes: Sequence[Node], ctx: RouteContext) -> list[float]:
        measured = [n.ewma_ttft for n in nodes if n.ewma_ttft > 0]
        if not measured:
            return [1.0] * len(nodes)
        best = min(measured)
        return [best / n.ewma_ttft if n.ewma_ttft > 0 else 1.0 for n in nodes]
