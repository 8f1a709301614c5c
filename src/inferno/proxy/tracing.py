"""The proxy's spans: one ``{operation} {model}`` span per forwarded request.

Started where the proxy forwards (its ``traceparent`` goes to the node, so the node's
spans are its children) and ended when the request log records the request's row, with
the row's figures: tokens, time to first token, status, node, attempts. The span travels
between the two in a context variable: the server runs each request, its stream
included, in one task of its own.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from inferno.net import Request
from inferno.ops.tracing import Tracing, operation

_span: ContextVar[Any] = ContextVar("inferno_proxy_span", default=None)


class ProxyTracing:
    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing

    def start(self, req: Request, path: str, model: str, stream: bool) -> bytes:
        """Open the request's span; the ``traceparent`` header value for the node."""
        op = operation(path)
        span = self.tracing.start(
            f"{op} {model}", traceparent=req.header("traceparent"), kind="CLIENT",
            attributes={"gen_ai.operation.name": op, "gen_ai.request.model": model,
                        "inferno.component": "proxy", "inferno.stream": stream})
        _span.set(span)
        return self.tracing.traceparent(span).encode()

    def finish(self, row: dict[str, Any]) -> None:
        span = _span.get()
        if span is None:
            return
        _span.set(None)
        status = int(row.get("status") or 500)
        ttft = row.get("ttft_ms")
        self.tracing.finish(span, {
            "gen_ai.response.model": row.get("model"),
            "gen_ai.usage.input_tokens": row.get("prompt_tokens"),
            "gen_ai.usage.output_tokens": row.get("completion_tokens"),
            "gen_ai.server.time_to_first_token": None if ttft is None else ttft / 1000.0,
            "http.response.status_code": status, "inferno.node": row.get("node"),
            "inferno.attempts": row.get("attempts"), "inferno.request_id": row.get("request_id"),
        }, error=row.get("error_code") or f"HTTP {status}" if status >= 400 else None)
