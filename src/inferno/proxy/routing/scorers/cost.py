"""Cheapest node, by price per token and price per hour (averaged).

Each price scores ``1 / (1 + price / cheapest_paid)``: free scores 1, the cheapest paid
node 0.5, twice its price 0.33, so a free local node beats any paid one and paid nodes
rank by price.
"""

from __future__ import annotations

from collections.abc import Sequence

from inferno.proxy.pool import Node
from inferno.proxy.routing.base import RouteContext


class Cost:
    name = "cost"
    needs_all = True  # the cheapest node of the pool, not of a sample

    def __init__(self, **_: object) -> None:
        pass

    def score(self, nodes: Sequence[Node], ctx: RouteContext) -> list[float]:
        per_token = _relative([n.price_per_mtok for n in nodes])
        per_hour = _relative([n.price_per_hour for n in nodes])
        return [(t + h) / 2 for t, h in zip(per_token, per_hour, strict=True)]


def _relative(prices: list[float]) -> list[float]:
    paid = [p for p in prices if p > 0]
    if not paid:
        return [1.0] * len(prices)
    cheapest = min(paid)
    return [1.0 / (1.0 + max(p, 0.0) / cheapest) for p in prices]
