"""Least outstanding requests, relative to each node's capacity.

Load is ``outstanding / capacity`` so a node with 8 slots takes twice the traffic of one
with 4. Ties go to the node that has served fewer requests, which spreads a cold start
evenly instead of piling onto the first node listed.
"""

from __future__ import annotations

from collections.abc import Sequence

from inferno.proxy.pool import Node
from inferno.proxy.routing.base import RouteContext


class LeastOutstanding:
    name = "least-outstanding"

    def order(self, nodes: Sequence[Node], ctx: RouteContext) -> list[Node]:
        if len(nodes) <= 1:
            return list(nodes)
        return sorted(nodes, key=_load)


def _load(node: Node) -> tuple[float, int]:
    return node.outstanding / max(node.capacity, 1), node.requests
