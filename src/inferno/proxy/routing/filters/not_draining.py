"""Drop nodes that announced they are draining (they finish work but take none)."""

from __future__ import annotations

from inferno.proxy.pool import Node
from inferno.proxy.routing.base import RouteContext


class NotDraining:
    name = "not-draining"
    panic_ok = False

    def __init__(self, **_: object) -> None:
        pass

    def keep(self, node: Node, ctx: RouteContext) -> bool:
        return node.state == "ready"
