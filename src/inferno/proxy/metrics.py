"""The proxy's Prometheus metrics, on a registry of its own (no process-global state)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "inferno_proxy_requests",
            "Client requests by route and status",
            ["route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "inferno_proxy_request_seconds",
            "Time to response headers (streams: to the first byte)",
            ["route"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.attempts = Counter(
            "inferno_proxy_upstream_attempts",
            "Requests sent to nodes, retries included",
            registry=registry,
        )
        self.upstream_errors = Counter(
            "inferno_proxy_upstream_errors", "Failed attempts by kind", ["kind"], registry=registry
        )
        self.in_flight = Gauge(
            "inferno_proxy_in_flight", "Client requests being served", registry=registry
        )
        self.streams_cut = Counter(
            "inferno_proxy_streams_cut",
            "Streams that ended without the node's [DONE] (the client got an error event), "
            "by reason: closed, reset, idle_timeout, malformed",
            ["reason"],
            registry=registry,
        )
        self.ejections = Counter(
            "inferno_proxy_ejections",
            "Nodes ejected by passive outlier detection",
            registry=registry,
        )
        self.nodes = Gauge(
            "inferno_proxy_nodes", "Nodes in the pool by state", ["state"], registry=registry
        )
        self.registrations = Counter(
            "inferno_proxy_registrations", "Registration events", ["event"], registry=registry
        )

    def bind_pool(self, count: Callable[[str], int]) -> None:
        for state in ("ready", "draining"):
            self.nodes.labels(state).set_function(_bind(count, state))


def _bind(count: Callable[[str], int], state: str) -> Callable[[], float]:
    return lambda: float(count(state))
