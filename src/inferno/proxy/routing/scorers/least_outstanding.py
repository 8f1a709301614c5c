"""Fewest requests in flight through this proxy, relative to the node's capacity."""

from __future__ import annotations

from collections.abc import Sequence

from inferno.proxy.pool import Node
from inferno.proxy.routing.base import RouteContext


class LeastOutstanding:
    name = "least-outstanding"

    def __init__(self, **_: object) -> None:
        pass

    def score(self, nodes: Sequence[Node], ctx: RouteContext) -> list[float]:
        return [1.0 / (1.0 + n.outstanding / max(n.capacity, 1)) for n in nodes]
