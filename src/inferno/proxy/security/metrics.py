"""Metrics of auth, limits, cache and the request log, on the proxy's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class SecurityMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.auth_failures = Counter("inferno_proxy_auth_failures",
                                     "Requests refused for credentials, by reason", ["reason"],
                                     registry=registry)
        self.rate_limited = Counter("inferno_proxy_rate_limited",
                                    "Requests refused with 429 by a key's limits",
                                    registry=registry)
        self.ratelimit_backend_errors = Counter(
            "inferno_proxy_ratelimit_backend_errors",
            "Redis failures (the proxy fell back to per-replica limits)", registry=registry)
        self.cache = Counter("inferno_proxy_cache", "Response cache lookups by result",
                             ["result"], registry=registry)
        self.cache_bytes = Gauge("inferno_proxy_cache_bytes",
                                 "Bytes held by the in-memory response cache",
                                 registry=registry)
        self.log_written = Counter("inferno_proxy_log_rows_written",
                                   "Request-log rows stored", registry=registry)
        self.log_dropped = Counter("inferno_proxy_log_rows_dropped",
                                   "Request-log rows dropped (queue full during an outage)",
                                   registry=registry)
        self.log_write_errors = Counter("inferno_proxy_log_write_errors",
                                        "Failed request-log batch writes (retried)",
                                        registry=registry)
        self.log_backlog = Gauge("inferno_proxy_log_backlog",
                                 "Request-log rows waiting to be written", registry=registry)
        self.registration_refused = Counter("inferno_proxy_registrations_refused",
                                            "Registrations refused, by status", ["status"],
                                            registry=registry)
