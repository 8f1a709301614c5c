"""The backend's Prometheus metrics, on a registry of its own (no process-global state)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from inferno.backend.engines.base import EngineStats
from inferno.backend.gpu import Gpu
from inferno.ops.tracing import Tracing, node_spans

# vLLM's bucket edges, so its users' dashboards read the same.
TOKEN_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0)
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class BackendMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter("inferno_backend_requests", "Requests by endpoint and status",
                                ["endpoint", "status"], registry=registry)
        self.latency = Histogram("inferno_backend_request_seconds",
                                 "Request latency, to the last byte", ["endpoint"],
                                 buckets=_LATENCY_BUCKETS, registry=registry)
        self.ttft = Histogram("inferno_backend_time_to_first_token_seconds",
                              "Time from request to the first generated token", ["endpoint"],
                              buckets=_LATENCY_BUCKETS, registry=registry)
        self.tokens = Counter("inferno_backend_generated_tokens", "Completion tokens generated",
                              registry=registry)
        self.in_flight = Gauge("inferno_backend_in_flight", "Requests being served",
                               registry=registry)
        self.model_loaded = Gauge("inferno_backend_model_loaded",
                                  "1 once the model is loaded and the node is ready",
                                  registry=registry)
        self.queue_depth = Gauge("inferno_backend_queue_depth",
                                 "Requests waiting for an engine slot", registry=registry)
        labels = ["gpu", "name"]
        self.gpu_memory_used = Gauge("inferno_gpu_memory_used_bytes", "GPU memory in use",
                                     labels, registry=registry)
        self.gpu_memory_total = Gauge("inferno_gpu_memory_total_bytes", "GPU memory",
                                      labels, registry=registry)
        self.gpu_utilization = Gauge("inferno_gpu_utilization",
                                     "GPU busy fraction over the driver's sample period",
                                     labels, registry=registry)
        # Gauges reading the engine's running totals (counters cannot take a callback).
        self.prompt_reused = Gauge("inferno_backend_prompt_tokens_reused",
                                   "Prompt tokens served from the prefix cache, since start",
                                   registry=registry)
        self.prompt_computed = Gauge("inferno_backend_prompt_tokens_computed",
                                     "Prompt tokens computed, since start", registry=registry)
        self.active = Gauge("inferno_backend_active_sequences", "Sequences generating now",
                            registry=registry)
        # The names vLLM users know (without its ``vllm:`` prefix), per served model.
        self.ttft_model = Histogram("inferno_time_to_first_token_seconds",
                                    "Time from request to the first generated token",
                                    ["model"], buckets=TOKEN_BUCKETS, registry=registry)
        self.itl = Histogram("inferno_inter_token_latency_seconds",
                             "Mean time between output tokens, one sample per request",
                             ["model"], buckets=TOKEN_BUCKETS, registry=registry)
        self.e2e = Histogram("inferno_e2e_request_latency_seconds",
                             "Time from request to its last token", ["model"],
                             buckets=E2E_BUCKETS, registry=registry)
        self.tracing: Tracing | None = None  # set by the node when OTEL_* turn traces on
        self.running = Gauge("inferno_num_requests_running", "Sequences generating now",
                             registry=registry)
        self.waiting = Gauge("inferno_num_requests_waiting",
                             "Requests waiting for an engine slot", registry=registry)

    def first_token(self, endpoint: str, model: str, seconds: float) -> None:
        self.ttft.labels(endpoint).observe(seconds)
        self.ttft_model.labels(model).observe(seconds)

    def turn_done(self, model: str, seconds: float, ttft: float, tokens: int, *,
                  endpoint: str = "chat", traceparent: str | None = None, status: int = 200,
                  prompt_tokens: int = 0, finish_reason: str | None = None) -> None:
        """A generation ended: end-to-end latency, its mean inter-token latency, and its
        spans when tracing is on."""
        self.tokens.inc(tokens)
        self.e2e.labels(model).observe(seconds)
        if tokens > 1:
            self.itl.labels(model).observe(max(0.0, seconds - ttft) / (tokens - 1))
        if self.tracing is not None:
            node_spans(self.tracing, model=model, seconds=seconds, ttft=ttft,
                       endpoint=endpoint, traceparent=traceparent, status=status,
                       prompt_tokens=prompt_tokens, completion_tokens=tokens,
                       finish_reason=finish_reason)

    def bind_engine(self, stats: Callable[[], EngineStats]) -> None:
        # Read at scrape time: the engine's counters are the single source of truth.
        self.queue_depth.set_function(lambda: stats().queued)
        self.active.set_function(lambda: stats().active)
        self.running.set_function(lambda: stats().active)
        self.waiting.set_function(lambda: stats().queued)
        self.prompt_reused.set_function(lambda: stats().prompt_tokens_reused)
        self.prompt_computed.set_function(lambda: stats().prompt_tokens_computed)

    def set_gpus(self, gpus: Sequence[Gpu]) -> None:
        for g in gpus:
            labels = (str(g.index), g.name)
            self.gpu_memory_used.labels(*labels).set(g.memory_used_bytes)
            self.gpu_memory_total.labels(*labels).set(g.memory_total_bytes)
            self.gpu_utilization.labels(*labels).set(g.utilization)
