"""The proxy's Prometheus metrics, on a registry of its own (no process-global state)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# vLLM's bucket edges for its latency histograms, so its users' dashboards read the same.
TOKEN_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0)


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

        # The names vLLM users know (without its ``vllm:`` prefix), per served model, from
        # the request log's rows (see proxy/observe.py): successful requests only, so a
        # client cannot grow the label set with made-up model names.
        self.ttft = Histogram("inferno_time_to_first_token_seconds",
                              "Time from request to the first token, seen at the proxy",
                              ["model"], buckets=TOKEN_BUCKETS, registry=registry)
        self.itl = Histogram("inferno_inter_token_latency_seconds",
                             "Mean time between output tokens, one sample per request",
                             ["model"], buckets=TOKEN_BUCKETS, registry=registry)
        self.e2e = Histogram("inferno_e2e_request_latency_seconds",
                             "Time from request to its last byte", ["model"],
                             buckets=E2E_BUCKETS, registry=registry)
        self.queue_time = Histogram("inferno_request_queue_time_seconds",
                                    "Time a request waited in the proxy's admission queue",
                                    buckets=TOKEN_BUCKETS, registry=registry)
        self.running = Gauge("inferno_num_requests_running",
                             "Requests on a node now (sent, not finished)", registry=registry)
        self.waiting = Gauge("inferno_num_requests_waiting",
                             "Requests waiting in the proxy's admission queue",
                             registry=registry)
        self.prompt_tokens = Counter("inferno_prompt_tokens", "Prompt tokens served",
                                     ["model"], registry=registry)
        self.generation_tokens = Counter("inferno_generation_tokens",
                                         "Completion tokens served", ["model"],
                                         registry=registry)
        self.cost = Counter("inferno_proxy_cost_usd", "Spend at the configured prices, USD",
                            ["model"], registry=registry)
        self.failovers = Counter("inferno_proxy_failovers",
                                 "Attempts moved to another node after a failure",
                                 registry=registry)
        self.alert_notifications = Counter("inferno_proxy_alert_notifications",
                                           "Alert webhook deliveries by result (ok, failed)",
                                           ["result"], registry=registry)
        self.readmissions = Counter("inferno_proxy_readmissions",
                                    "Ejected nodes re-admitted (breaker closed again)",
                                    registry=registry)

    def bind_pool(self, count: Callable[[str], int]) -> None:
        for state in ("ready", "draining"):
            self.nodes.labels(state).set_function(_bind(count, state))


def _bind(count: Callable[[str], int], state: str) -> Callable[[], float]:
    return lambda: float(count(state))
