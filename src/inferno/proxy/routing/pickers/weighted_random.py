"""Power of two choices: draw two nodes with probability proportional to their scores,
take the better. It avoids the herding of always taking the maximum when scores are
stale, at almost no cost. Fallbacks follow in descending score order."""

from __future__ import annotations

import random
from collections.abc import Sequence

from inferno.proxy.pool import Node
from inferno.proxy.routing.base import RouteContext


class WeightedRandom:
    name = "weighted-random"

    def __init__(self, seed: int | None = None, **_: object) -> None:
        self._rng = random.Random(seed)

    def order(self, nodes: Sequence[Node], totals: Sequence[float],
              ctx: RouteContext) -> list[Node]:
        n = len(nodes)
        if n <= 1:
            return list(nodes)
        weights = [max(t, 1e-6) for t in totals]
        a, b = self._rng.choices(range(n), weights=weights, k=2)
        first = a if totals[a] >= totals[b] else b
        rest = sorted((i for i in range(n) if i != first), key=lambda i: -totals[i])
        return [nodes[first], *(nodes[i] for i in rest)]
