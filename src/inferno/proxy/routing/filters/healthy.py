"""Drop nodes whose circuit breaker is open or that fail active health checks.

If that would leave nothing, keep them all ("panic mode", as Envoy does below its healthy
threshold): trying a suspect node beats answering 503 without trying anything. The
profile applies that rule; this filter only says what it thinks.
"""

from __future__ import annotations

from inferno.proxy.pool import Node
from inferno.proxy.routing.base import RouteContext


class Healthy:
    name = "healthy"
    panic_ok = True

    def __init__(self, **_: object) -> None:
        pass

    def keep(self, node: Node, ctx: RouteContext) -> bool:
        return node.routable(ctx.now)
