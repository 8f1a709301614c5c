"""Highest total first; the rest in descending order as fallbacks. Ties rotate, so equal
nodes share a burst instead of all of it landing on the first one listed."""

from __future__ import annotations

from collections.abc import Sequence

from inferno.proxy.pool import Node
from inferno.proxy.routing.base import RouteContext


class MaxScore:
    name = "max-score"

    def __init__(self, **_: object) -> None:
        self._turn = 0

    def order(self, nodes: Sequence[Node], totals: Sequence[float],
              ctx: RouteContext) -> list[Node]:
        n = len(nodes)
        if n <= 1:
            return list(nodes)
        self._turn += 1
        shift = self._turn
        ranked = sorted(range(n), key=lambda i: (-totals[i], (i - shift) % n))
        return [nodes[i] for i in ranked]
