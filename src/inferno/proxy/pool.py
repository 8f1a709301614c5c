"""The pool of nodes, read on the hot path as an immutable snapshot.

Membership changes (registration, lease expiry, drain) build a new :class:`PoolSnapshot`
and swap one reference; the request path reads ``pool.snapshot`` once and routes over it
without locks. Per-node live state (outstanding requests, latency, the circuit breaker,
active-check verdict) sits on the :class:`Node` objects, which successive snapshots share,
as Pingora's load balancer shares backend stats across its ``ArcSwap``-ed sets; health
filters read it at routing time without side effects.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from inferno.api.node import Registration
from inferno.proxy.health.breaker import Breaker, BreakerPolicy

Source = Literal["static", "registered"]


@dataclass(slots=True, eq=False)
class Node:
    id: str
    host: str
    port: int
    ops_port: int
    models: frozenset[str]
    capacity: int
    source: Source
    state: str = "ready"
    expires_at: float = float("inf")
    price_per_hour: float = 0.0
    price_per_mtok: float = 0.0  # input and output averaged, for ranking
    # Nodes that load models at run time: which of ``models`` are loaded, which loadable.
    loaded: frozenset[str] = frozenset()
    available: frozenset[str] = frozenset()
    # Live state, shared by every snapshot that holds this node.
    outstanding: int = 0
    requests: int = 0
    failures: int = 0
    last_error: str | None = None
    ewma_ttft: float = 0.0  # seconds; 0 until the first measurement
    queue_depth: int = 0  # from the node's /telemetry
    # Active health checks: a node must pass N in a row to (re)enter rotation.
    healthy: bool = True
    passes: int = 0
    # Health evidence: when the node last renewed its lease or answered a request well,
    # and the recent gap between two renewals (its heartbeat as we see it; 0 until known).
    # Active checks probe only nodes whose evidence has gone stale (health/active.py).
    evidence_at: float = 0.0
    renewed_at: float = 0.0
    renew_gap: float = 0.0
    breaker: Breaker = field(default_factory=lambda: Breaker(BreakerPolicy()))

    def routable(self, now: float) -> bool:
        return self.healthy and self.breaker.available(now)

    def observe_ttft(self, seconds: float, alpha: float = 0.3) -> None:
        self.ewma_ttft = seconds if self.ewma_ttft == 0.0 else (
            alpha * seconds + (1 - alpha) * self.ewma_ttft)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    nodes: tuple[Node, ...] = ()
    # Routable (ready) nodes per model name.
    by_model: Mapping[str, tuple[Node, ...]] = field(
        default_factory=lambda: MappingProxyType({}))
    # Every model any known node serves, routable or not.
    models: frozenset[str] = frozenset()

    @classmethod
    def build(cls, nodes: list[Node]) -> PoolSnapshot:
        ready: dict[str, list[Node]] = {}
        for node in nodes:
            if node.state == "ready":
                for model in node.models:
                    ready.setdefault(model, []).append(node)
        models = frozenset(m for n in nodes for m in n.models)
        return cls(tuple(nodes), MappingProxyType({m: tuple(v) for m, v in ready.items()}),
                   models)


class Pool:
    def __init__(self, *, default_lease: float, breaker: BreakerPolicy | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._nodes: dict[str, Node] = {}
        # No lease ends before this: the sweeper (4 times a second) scans the pool only
        # once it has passed. Renewals only move leases later; an upsert may lower it.
        self._earliest = float("inf")
        self._default_lease = default_lease
        self._breaker = breaker or BreakerPolicy()
        self._clock = clock
        self.snapshot = PoolSnapshot()
        # (kind, node id, detail) on membership changes, for the self-healing timeline.
        self.on_event: Callable[[str, str, str], None] | None = None
        # Called with each new snapshot (held requests wait for a node: proxy/standby.py).
        self.on_publish: Callable[[PoolSnapshot], None] | None = None

    def _emit(self, kind: str, node_id: str, detail: str = "") -> None:
        if self.on_event is not None:
            self.on_event(kind, node_id, detail)

    def _publish(self) -> None:
        self.snapshot = PoolSnapshot.build(list(self._nodes.values()))
        if self.on_publish is not None:
            self.on_publish(self.snapshot)

    def upsert(self, reg: Registration, source: Source = "registered") -> Node:
        """Add a node or renew its lease; a changed address or model list replaces it."""
        lease = reg.lease_seconds or self._default_lease
        now = self._clock()
        expires = now + lease
        self._earliest = min(self._earliest, expires)
        models = frozenset(reg.models)
        node = self._nodes.get(reg.id)
        if (node is not None and node.host == reg.host and node.port == reg.port
                and node.models == models):
            # A renewal: only the lease and the evidence move; the routing snapshot is
            # rebuilt only when the node's state changes (it decides routability).
            node.expires_at = expires
            # The longest recent gap, decaying: an extra renewal sent at once (the node's
            # models changed) must not make its regular heartbeat look overdue.
            node.renew_gap = max(now - node.renewed_at, node.renew_gap * 0.75)
            node.renewed_at = now
            node.evidence_at = now
            node.capacity = reg.capacity
            loaded, available = frozenset(reg.loaded), frozenset(reg.available)
            # Which models are loaded ranks candidates (a sampled ranking draws from the
            # nodes that have it loaded), so a change publishes a new snapshot too.
            changed = loaded != node.loaded or available != node.available
            node.loaded, node.available = loaded, available
            if node.state != reg.state:
                node.state = reg.state
                self._publish()
                self._emit(reg.state, reg.id, f"the node reports {reg.state}")
            elif changed:
                self._publish()
            return node
        node = Node(id=reg.id, host=reg.host, port=reg.port, ops_port=reg.metrics_port,
                    models=models, capacity=reg.capacity, source=source, state=reg.state,
                    expires_at=expires, price_per_hour=reg.price_per_hour,
                    price_per_mtok=(reg.price_per_mtok_input + reg.price_per_mtok_output) / 2,
                    loaded=frozenset(reg.loaded), available=frozenset(reg.available),
                    breaker=Breaker(self._breaker), evidence_at=now, renewed_at=now)
        self._nodes[reg.id] = node
        self._publish()
        self._emit("registered", reg.id, f"{source} node serving {', '.join(sorted(models))}")
        return node

    def remove(self, node_id: str) -> bool:
        """Out of rotation at once; requests already on the node finish normally."""
        if self._nodes.pop(node_id, None) is None:
            return False
        self._publish()
        self._emit("deregistered", node_id, "the node left the pool")
        return True

    def expire(self) -> list[str]:
        now = self._clock()
        if now < self._earliest:
            return []
        gone = [nid for nid, n in self._nodes.items() if n.expires_at <= now]
        self._earliest = min((n.expires_at for n in self._nodes.values() if n.expires_at > now),
                             default=float("inf"))
        for nid in gone:
            del self._nodes[nid]
        if gone:
            self._publish()
        for nid in gone:
            self._emit("expired", nid, "its lease lapsed (no heartbeat)")
        return gone

    def get(self, node_id: str) -> Node | None:
        return self._nodes.get(node_id)

    def nodes(self) -> list[Node]:
        return list(self._nodes.values())
