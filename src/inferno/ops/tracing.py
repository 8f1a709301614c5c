"""OpenTelemetry traces, off unless the standard ``OTEL_*`` variables turn them on.

:func:`tracing_from_env` returns None (and imports nothing) unless
``OTEL_TRACES_EXPORTER`` names ``otlp`` or an OTLP endpoint is set
(``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), and
``OTEL_SDK_DISABLED`` is not ``true``; callers keep that None and pay one ``is None`` test
per request. When on, spans go to an OTLP/HTTP exporter configured by the SDK from the
same variables (endpoint, headers, timeout), in batches on the SDK's own thread;
``OTEL_SERVICE_NAME`` names the service. Spans follow the GenAI semantic conventions
(``chat {model}``, ``gen_ai.*`` attributes) and carry W3C ``traceparent`` between
components.

Spans here are made with explicit start and end times, once the figures are known: the
request path adds no context switches and no per-chunk work.
"""

from __future__ import annotations

import os
import time
from typing import Any

_TRUE = ("true", "1", "yes")


def tracing_wanted(env: dict[str, str] | None = None) -> bool:
    env = dict(os.environ) if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").lower() in _TRUE:
        return False
    exporters = {e.strip() for e in env.get("OTEL_TRACES_EXPORTER", "").lower().split(",")}
    if "none" in exporters:
        return False
    return "otlp" in exporters or bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                                       or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


class Tracing:
    """One component's tracer: start/finish spans with GenAI attributes; W3C propagation."""

    def __init__(self, service: str, exporter: Any = None) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        name = os.environ.get("OTEL_SERVICE_NAME") or service
        self.provider = TracerProvider(resource=Resource.create({"service.name": name}))
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self.provider.get_tracer("inferno")
        self._propagator = TraceContextTextMapPropagator()

    def start(self, name: str, *, traceparent: str | None, kind: str,
              attributes: dict[str, Any], start_ns: int | None = None,
              parent: Any = None) -> Any:
        from opentelemetry import trace

        ctx = None
        if parent is not None:
            ctx = trace.set_span_in_context(parent)
        elif traceparent:
            ctx = self._propagator.extract({"traceparent": traceparent})
        return self._tracer.start_span(name, context=ctx, kind=getattr(trace.SpanKind, kind),
                                       attributes=attributes, start_time=start_ns)

    def traceparent(self, span: Any) -> str:
        """The W3C header that makes the next hop's spans children of ``span``."""
        from opentelemetry import trace

        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=trace.set_span_in_context(span))
        return carrier["traceparent"]

    @staticmethod
    def finish(span: Any, attributes: dict[str, Any], *, error: str | None = None,
               end_ns: int | None = None) -> None:
        from opentelemetry.trace import Status, StatusCode

        span.set_attributes({k: v for k, v in attributes.items() if v is not None})
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=end_ns)

    def shutdown(self) -> None:
        self.provider.shutdown()  # flushes what is batched


def tracing_from_env(service: str) -> Tracing | None:
    return Tracing(service) if tracing_wanted() else None


def wall_ns(perf_started: float) -> int:
    """A ``time.perf_counter()`` reading as wall-clock nanoseconds (span timestamps)."""
    return time.time_ns() - int((time.perf_counter() - perf_started) * 1e9)


def operation(path: str) -> str:
    """The GenAI operation name of an OpenAI route."""
    if path.endswith("/embeddings"):
        return "embeddings"
    return "chat" if path.endswith("/chat/completions") else "text_completion"


def node_spans(tracing: Tracing, *, model: str, seconds: float, ttft: float, endpoint: str,
               traceparent: str | None, status: int, prompt_tokens: int,
               completion_tokens: int, finish_reason: str | None) -> None:
    """A node's finished generation as two spans: the node serving the request (a child of
    the caller's ``traceparent``) and, inside it, the engine generating."""
    end = time.time_ns()
    start = end - int(seconds * 1e9)
    op = "chat" if endpoint == "chat" else "text_completion"
    common = {"gen_ai.operation.name": op, "gen_ai.request.model": model,
              "gen_ai.response.model": model}
    usage = {"gen_ai.usage.input_tokens": prompt_tokens,
             "gen_ai.usage.output_tokens": completion_tokens,
             "gen_ai.response.finish_reasons": [finish_reason] if finish_reason else None,
             "gen_ai.server.time_to_first_token": ttft}
    error = f"HTTP {status}" if status >= 400 else None
    server = tracing.start(f"{op} {model}", traceparent=traceparent, kind="SERVER",
                           attributes={**common, "inferno.component": "node"}, start_ns=start)
    engine = tracing.start(f"generate {model}", traceparent=None, kind="INTERNAL",
                           attributes={**common, "inferno.component": "engine"},
                           start_ns=start, parent=server)
    tracing.finish(engine, usage, error=error, end_ns=end)
    tracing.finish(server, {**usage, "http.response.status_code": status}, error=error,
                   end_ns=end)
