"""The self-healing timeline: what the proxy did about failures, newest last.

A bounded in-memory ring of :class:`Event` with a monotonic id, fed by small hooks where
those things happen (the pool's membership, passive and active health, failover in the
forwarder). ``emit`` is an append and never waits; a burst of the same event for the same
node within a second folds into one event with a count, so a failing node cannot flush the
ring. Readers page with ``since(id)``; the dashboard's live stream polls ``last_id``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

# Kinds, for readers: failover, ejected, readmitted, breaker_half_open, unhealthy, healthy,
# registered, deregistered, expired, draining, ready.
_FOLD_S = 1.0


@dataclass(slots=True)
class Event:
    id: int
    ts: float
    kind: str
    node: str | None
    detail: str
    count: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class EventLog:
    def __init__(self, size: int = 2000, clock: Callable[[], float] = time.time) -> None:
        self._ring: deque[Event] = deque(maxlen=size)
        self._clock = clock
        self.last_id = 0
        self.listeners: list[Callable[[Event], None]] = []

    def emit(self, kind: str, node: str | None = None, detail: str = "") -> None:
        now = self._clock()
        last = self._ring[-1] if self._ring else None
        if (last is not None and last.kind == kind and last.node == node
                and now - last.ts < _FOLD_S):
            last.count += 1
            last.detail = detail or last.detail
            return
        self.last_id += 1
        event = Event(self.last_id, now, kind, node, detail)
        self._ring.append(event)
        for listener in self.listeners:
            listener(event)

    def since(self, after: int = 0, limit: int = 200) -> list[Event]:
        """Events with an id above ``after``, oldest first (at most ``limit``, the newest)."""
        out = [e for e in self._ring if e.id > after]
        return out[-limit:]

    def recent(self, limit: int = 50) -> list[Event]:
        return list(self._ring)[-limit:]
