"""Per-node and per-model gauges, read from the pool when Prometheus scrapes.

Nothing is updated on the request path: a collector walks the pool snapshot at scrape
time, so a node that leaves the pool leaves the metrics with it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from inferno.proxy.pool import Pool

# inferno_proxy_node_breaker_state: the value of each breaker state.
BREAKER_VALUES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


class PoolCollector(Collector):
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.monotonic()
        breaker = GaugeMetricFamily("inferno_proxy_node_breaker_state",
                                    "Circuit breaker per node: 0 closed, 1 half-open, 2 open",
                                    labels=["node"])
        healthy = GaugeMetricFamily("inferno_proxy_node_healthy",
                                    "1 while a node passes its active health checks",
                                    labels=["node"])
        routable = GaugeMetricFamily("inferno_proxy_node_routable",
                                     "1 while a node may take requests (healthy, breaker "
                                     "not open, not draining)", labels=["node"])
        in_flight = GaugeMetricFamily("inferno_proxy_node_in_flight",
                                      "Requests on the node now", labels=["node"])
        queue = GaugeMetricFamily("inferno_proxy_node_queue_depth",
                                  "Requests queued on the node (its telemetry)",
                                  labels=["node"])
        per_model = GaugeMetricFamily("inferno_proxy_model_routable_nodes",
                                      "Nodes that may take requests, per model",
                                      labels=["model"])
        counts: dict[str, int] = {}
        for n in self._pool.snapshot.nodes:
            ok = n.state == "ready" and n.routable(now)
            breaker.add_metric([n.id], BREAKER_VALUES.get(n.breaker.state, 2.0))
            healthy.add_metric([n.id], 1.0 if n.healthy else 0.0)
            routable.add_metric([n.id], 1.0 if ok else 0.0)
            in_flight.add_metric([n.id], float(n.outstanding))
            queue.add_metric([n.id], float(n.queue_depth))
            for model in n.models:
                counts[model] = counts.get(model, 0) + int(ok)
        for model, count in sorted(counts.items()):
            per_model.add_metric([model], float(count))
        yield from (breaker, healthy, routable, in_flight, queue, per_model)


def register_pool_metrics(registry: CollectorRegistry, pool: Pool) -> None:
    registry.register(PoolCollector(pool))
