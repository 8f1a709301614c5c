"""Send requests that share a prompt prefix to the node that served it (KV-cache reuse).

The prompt is cut into blocks; each block's hash covers everything before it, so a match
of k blocks means the first k blocks are identical. An LRU index remembers which node
last served each block hash. A node scores the fraction of the prompt's blocks it holds.
For a prefix nobody has served yet, rendezvous hashing of the first block makes every
proxy pick the same node, so the cache warms in one place.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from inferno.proxy.pool import Node
from inferno.proxy.routing.base import RouteContext
from inferno.proxy.routing.scorers.session_affinity import rendezvous_best


class PrefixAffinity:
    name = "prefix-affinity"
    needs_all = True  # rendezvous hashing must see every candidate to agree across requests
    needs_prefix = True

    def __init__(self, capacity: int = 50_000, **_: object) -> None:
        self._index: OrderedDict[int, str] = OrderedDict()
        self._capacity = int(capacity)

    def score(self, nodes: Sequence[Node], ctx: RouteContext) -> list[float]:
        blocks = ctx.prefix_blocks
        if not blocks or not nodes:
            return [0.0] * len(nodes)
        matched: dict[str, int] = {}
        for depth, block in enumerate(blocks, 1):
            owner = self._index.get(block)
            if owner is None:
                break
            matched[owner] = depth
        if not matched:
            seed = rendezvous_best(str(blocks[0]), nodes)
            return [0.5 if i == seed else 0.0 for i in range(len(nodes))]
        return [matched.get(n.id, 0) / len(blocks) for n in nodes]

    def observe(self, node: Node, ctx: RouteContext) -> None:
        for block in ctx.prefix_blocks:
            self._index[block] = node.id
            self._index.move_to_end(block)
        while len(self._index) > self._capacity:
            self._index.popitem(last=False)
