"""Nodes that have the model loaded now, before nodes that would load it first.

A node that lists the model only as available answers after a load of seconds to minutes,
so in every preset this outweighs load balancing (weight 4 against least-outstanding's 1):
the loaded node wins unless the admission cap has no room left on it. Nodes that report no
load state at all (static backends, single-model nodes of older versions) count as loaded.
"""

from __future__ import annotations

from collections.abc import Sequence

from inferno.proxy.pool import Node
from inferno.proxy.routing.base import RouteContext


class ModelLoaded:
    name = "model-loaded"

    def __init__(self, **_: object) -> None:
        pass

    def prefer(self, node: Node, model: str) -> bool:
        """Where a sampled ranking should draw its candidates from first."""
        return model in node.loaded or not (node.loaded or node.available)

    def score(self, nodes: Sequence[Node], ctx: RouteContext) -> list[float]:
        return [1.0 if ctx.model in n.loaded or not (n.loaded or n.available) else 0.0
                for n in nodes]
