"""The routing contract.

A picker orders the candidate nodes for one request: the first is tried first, the rest
are the fallbacks, in order. It is synchronous and pure over its inputs (the snapshot's
candidate tuple and the request's :class:`RouteContext`), so routing never awaits and
never takes a lock; a picker may keep a small private cursor (round-robin).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from inferno.proxy.pool import Node


@dataclass(frozen=True, slots=True)
class RouteContext:
    model: str
    stream: bool
    user: str | None = None


class Picker(Protocol):
    name: str

    def order(self, nodes: Sequence[Node], ctx: RouteContext) -> list[Node]: ...
