"""Hybrid local/cloud routing: prefer free (local) nodes, offload to priced (cloud) ones
only while the local queue wait exceeds a threshold.

A node's first byte arrives after its queue wait plus prefill (nodes send headers with
the first token), so the EWMA time to first byte is a direct, per-node measure of queue
wait. A local node that is idle by its own report (queue depth 0, under capacity) counts
as free whatever its stale EWMA says, so traffic comes back once the burst is over.

Scores: a local node under the threshold 1.0, over it 0.0; a priced node 0.5. With a
weight above the load scorers', local wins while it keeps up, the cloud takes the excess.
"""

from __future__ import annotations

from collections.abc import Sequence

from inferno.proxy.pool import Node
from inferno.proxy.routing.base import RouteContext


class Offload:
    name = "offload"
    needs_all = True  # a sample may hold no local node at all

    def __init__(self, max_queue_wait: float = 2.0, **_: object) -> None:
        self._threshold = float(max_queue_wait)

    def _local_ok(self, n: Node) -> bool:
        if n.queue_depth == 0 and n.outstanding < max(n.capacity, 1):
            return True
        backlog = 1.0 + n.queue_depth / max(n.capacity, 1)
        return n.ewma_ttft * backlog <= self._threshold

    def score(self, nodes: Sequence[Node], ctx: RouteContext) -> list[float]:
        return [0.5 if _priced(n) else (1.0 if self._local_ok(n) else 0.0) for n in nodes]


def _priced(n: Node) -> bool:
    return n.price_per_mtok > 0 or n.price_per_hour > 0
