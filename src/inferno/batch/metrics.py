"""Batch progress on the host's ``/metrics``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as PromCounter

_STATES = ("new", "pending", "running", "done", "failed", "cancelled", "expired")
_OPEN = ("validating", "in_progress", "finalizing", "cancelling")


class BatchMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.batches = Gauge("inferno_batches_open", "Open batches by status", ["status"],
                             registry=registry)
        self.items = Gauge("inferno_batch_items", "Items of open batches by state", ["state"],
                           registry=registry)
        self.outcomes = PromCounter("inferno_batch_item_outcomes",
                                    "Batch item attempts run here, by outcome",
                                    ["outcome"], registry=registry)

    def observe(self, rows: Sequence[dict[str, Any]],
                counts: dict[str, dict[str, int]]) -> None:
        by_status = Counter(r["status"] for r in rows)
        for status in _OPEN:
            self.batches.labels(status).set(by_status.get(status, 0))
        totals: Counter[str] = Counter()
        for c in counts.values():
            totals.update(c)
        for state in _STATES:
            self.items.labels(state).set(totals.get(state, 0))

    def outcome(self, outcome: str) -> None:
        self.outcomes.labels(outcome).inc()
