"""The routing contract: filters, then weighted scorers, then a picker.

- A :class:`Filter` drops nodes that must not get this request (unhealthy, draining, ...).
- A :class:`Scorer` rates each remaining node in [0, 1], higher is better. The profile
  clamps whatever a scorer returns into that range, multiplies by the scorer's weight and
  times it, so a buggy plugin can neither dominate nor go unnoticed.
- A :class:`Picker` turns the totals into an order: the first node is tried first, the
  rest are fallbacks, in order.

Everything here is synchronous and pure over its inputs (the snapshot's candidates and
the request's :class:`RouteContext`): routing never awaits and never takes a lock.
Plugins may keep private bookkeeping that ``observe`` updates after a choice
(round-robin's cursor, prefix affinity's index).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from inferno.proxy.pool import Node


@dataclass(frozen=True, slots=True)
class RouteContext:
    model: str
    stream: bool
    user: str | None = None
    session: str | None = None  # x-session-id header, else `user`
    # Hashes of the prompt's leading blocks (only computed when a plugin needs them).
    prefix_blocks: tuple[int, ...] = ()
    now: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Filter(Protocol):
    name: str

    def keep(self, node: Node, ctx: RouteContext) -> bool: ...


class Scorer(Protocol):
    name: str

    def score(self, nodes: Sequence[Node], ctx: RouteContext) -> list[float]:
        """One score per node, in order, each meant to lie in [0, 1]."""
        ...


class Picker(Protocol):
    name: str

    def order(self, nodes: Sequence[Node], totals: Sequence[float],
              ctx: RouteContext) -> list[Node]: ...


class Observer(Protocol):
    """Optional on any plugin: told which node a request went to."""

    def observe(self, node: Node, ctx: RouteContext) -> None: ...


class Preferrer(Protocol):
    """Optional on a scorer: the nodes a sampled ranking should draw from first (a large
    pool ranks a random sample of its candidates, see profile.py)."""

    def prefer(self, node: Node, model: str) -> bool: ...
