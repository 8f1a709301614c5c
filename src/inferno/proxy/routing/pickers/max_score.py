"""Highest total first; the rest in descending order as fallbacks.

Totals within ``tie_margin`` of the best count as a tie, and ties rotate: measured
signals (latency EWMA) always differ a little, and without a margin the node that is
marginally fastest would take every request until its own load caught up (herding).
"""

from __future__ import annotations

from collections.abc import Sequence

from inferno.proxy.pool import Node
from inferno.proxy.routing.base import RouteContext


class MaxScore:
    name = "max-score"

    def __init__(self, tie_margin: float = 0.05, **_: object) -> None:
        self._margin = float(tie_margin)
        self._turn = 0

    def order(self, nodes: Sequence[Node], totals: Sequence[float],
              ctx: RouteContext) -> list[Node]:
        n = len(nodes)
        if n <= 1:
            return list(nodes)
        self._turn += 1
        best = max(totals)
        top = [i for i in range(n) if totals[i] >= best - self._margin]
        first = top[self._turn % len(top)]
        rest = sorted((i for i in range(n) if i != first), key=lambda i: -totals[i])
        return [nodes[first], *(nodes[i] for i in rest)]
