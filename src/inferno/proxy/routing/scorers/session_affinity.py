"""Keep a session on one node: rendezvous hashing of the session key over the candidates.

Rendezvous (highest random weight) hashing moves only the sessions of a node that leaves,
and needs no shared table, so every proxy replica agrees without talking.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from inferno.proxy.pool import Node
from inferno.proxy.routing.base import RouteContext


def rendezvous_best(key: str, nodes: Sequence[Node]) -> int:
    def weight(node: Node) -> bytes:
        return hashlib.blake2b(f"{key}|{node.id}".encode(), digest_size=8).digest()

    return max(range(len(nodes)), key=lambda i: weight(nodes[i]))


class SessionAffinity:
    name = "session-affinity"
    needs_all = True  # rendezvous hashing must see every candidate to agree across requests

    def __init__(self, **_: object) -> None:
        pass

    def score(self, nodes: Sequence[Node], ctx: RouteContext) -> list[float]:
        if not ctx.session or not nodes:
            return [0.0] * len(nodes)
        best = rendezvous_best(ctx.session, nodes)
        return [1.0 if i == best else 0.0 for i in range(len(nodes))]
