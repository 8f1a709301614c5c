"""Round-robin: each request starts one node further along, ignoring scores; fallbacks
follow in ring order."""

from __future__ import annotations

from collections.abc import Sequence

from inferno.proxy.pool import Node
from inferno.proxy.routing.base import RouteContext


class RoundRobin:
    name = "round-robin"
    needs_all = True  # a ring over a random sample is no ring

    def __init__(self, **_: object) -> None:
        self._next = 0

    def order(self, nodes: Sequence[Node], totals: Sequence[float],
              ctx: RouteContext) -> list[Node]:
        n = len(nodes)
        if n <= 1:
            return list(nodes)
        start = self._next % n
        self._next = start + 1
        return [*nodes[start:], *nodes[:start]]
