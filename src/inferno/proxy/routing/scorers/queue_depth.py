"""Shortest queue as the node itself reports it (its /telemetry), which also counts
work sent by other proxies."""

from __future__ import annotations

from collections.abc import Sequence

from inferno.proxy.pool import Node
from inferno.proxy.routing.base import RouteContext


class QueueDepth:
    name = "queue-depth"

    def __init__(self, **_: object) -> None:
        pass

    def score(self, nodes: Sequence[Node], ctx: RouteContext) -> list[float]:
        return [1.0 / (1.0 + n.queue_depth / max(n.capacity, 1)) for n in nodes]
