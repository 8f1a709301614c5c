"""A per-node circuit breaker: closed -> open -> half-open (one probe) -> closed.

``consecutive_failures`` failures in a row trip it (if the pool's ejection cap allows),
for ``base_ejection`` seconds doubled on every repeat ejection (capped at
``max_ejection``). When that time is up the node is *half-open*: exactly one request
(the probe) may go through; success closes the breaker, failure opens it again for
longer. A success while closed resets the failure streak; a long closed stretch forgets
past ejections, so a node that healed long ago starts from the base time again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    consecutive_failures: int = 5
    base_ejection: float = 5.0
    max_ejection: float = 120.0
    # A node closed this long without a failure has its ejection count reset.
    forget_after: float = 300.0


class Breaker:
    __slots__ = ("_closed_since", "_policy", "ejections", "failures", "open_until",
                 "probe_in_flight", "state")

    def __init__(self, policy: BreakerPolicy) -> None:
        self._policy = policy
        self.state: BreakerState = "closed"
        self.failures = 0
        self.ejections = 0
        self.open_until = 0.0
        self.probe_in_flight = False
        self._closed_since = 0.0

    def available(self, now: float) -> bool:
        """May a request be routed here? (No side effects: routing stays pure.)"""
        if self.state == "closed":
            return True
        if self.state == "open":
            return now >= self.open_until
        return not self.probe_in_flight

    def acquire(self, now: float) -> bool:
        """Called when an attempt is about to be made; takes the probe slot if half-open."""
        if self.state == "closed":
            return True
        if self.state == "open":
            if now < self.open_until:
                return False
            self.state = "half_open"
        if self.probe_in_flight:
            return False
        self.probe_in_flight = True
        return True

    def success(self, now: float) -> bool:
        """Record a good answer; returns True if this closed the breaker."""
        self.failures = 0
        if self.state == "closed":
            if self.ejections and now - self._closed_since > self._policy.forget_after:
                self.ejections = 0
            return False
        self.state = "closed"
        self.probe_in_flight = False
        self._closed_since = now
        return True

    def failure(self, now: float, may_eject: bool) -> bool:
        """Record a failure; returns True if this opened the breaker."""
        self.failures += 1
        if self.state == "half_open":
            self.probe_in_flight = False
            return self._open(now)
        if self.state == "closed" and self.failures >= self._policy.consecutive_failures \
                and may_eject:
            return self._open(now)
        return False

    def release_probe(self) -> None:
        """The probe ended without a verdict (e.g. the client left): let another try."""
        self.probe_in_flight = False

    def _open(self, now: float) -> bool:
        self.ejections += 1
        p = self._policy
        self.open_until = now + min(p.max_ejection, p.base_ejection * 2 ** (self.ejections - 1))
        self.state = "open"
        return True
