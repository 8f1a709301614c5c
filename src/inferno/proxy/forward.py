"""Forwarding one request to a node, with failover while nothing has reached the client.

An attempt may move to the next node only before the first byte goes out: on a connect
failure, a reset or timeout before the response completes (non-streaming) or before
headers (streaming), or a 429/502/503/504 answer. Once a stream has started, a failure
ends it with an in-band ``data: {"error": ...}`` event and no ``[DONE]``, so OpenAI
clients raise instead of silently returning a truncated answer.

The request body is forwarded as the client sent it (never re-serialised); only the
headers the node needs travel, never the client's credentials.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence

from inferno.core.errors import (
    InfernoError,
    NoBackendAvailable,
    UpstreamError,
    UpstreamTimeout,
)
from inferno.net import HttpClient, Response, StreamingResponse, UpstreamResponse
from inferno.proxy.metrics import ProxyMetrics
from inferno.proxy.pool import Node

log = logging.getLogger("inferno.proxy")

RETRY_STATUSES = frozenset({429, 502, 503, 504})
_FORWARDED = (b"content-type", b"accept", b"x-request-id", b"openai-organization")


class Forwarder:
    def __init__(self, client: HttpClient, metrics: ProxyMetrics, *, connect_timeout: float,
                 response_timeout: float, stream_idle_timeout: float,
                 max_attempts: int) -> None:
        self._client = client
        self._metrics = metrics
        self._connect_timeout = connect_timeout
        self._response_timeout = response_timeout
        self._idle_timeout = stream_idle_timeout
        self._max_attempts = max_attempts

    async def forward(self, target: str, headers: Sequence[tuple[bytes, bytes]], body: bytes,
                      nodes: Sequence[Node], stream: bool) -> Response | StreamingResponse:
        fwd = [(k, v) for k, v in headers if k in _FORWARDED]
        tries = nodes[: self._max_attempts]
        last_error: InfernoError | None = None
        last_reply: tuple[int, bytes, str] | None = None
        for attempt, node in enumerate(tries, 1):
            self._metrics.attempts.inc()
            node.outstanding += 1
            node.requests += 1
            handed_off = False
            try:
                resp = await self._client.request(
                    node.host, node.port, "POST", target, headers=fwd, body=body,
                    connect_timeout=self._connect_timeout, header_timeout=self._response_timeout)
                final = attempt == len(tries)
                if resp.status in RETRY_STATUSES and not final:
                    payload = await resp.read()
                    resp.close()
                    self._note_failure(node, f"HTTP {resp.status}", "status")
                    last_reply = (resp.status, payload, resp.header("content-type") or "")
                    continue
                meta = _meta(node, attempt)
                if stream and resp.status == 200:
                    handed_off = True
                    return StreamingResponse(self._relay(resp, node), headers=meta)
                payload = await resp.read()
                resp.close()
                return Response(resp.status, payload, headers=meta,
                                content_type=resp.header("content-type") or "application/json")
            except UpstreamError as exc:
                self._note_failure(node, exc.message, exc.code)
                last_error = exc
            finally:
                if not handed_off:
                    node.outstanding -= 1
        if last_reply is not None:
            status, payload, ctype = last_reply
            return Response(status, payload, content_type=ctype or "application/json",
                            headers=[("retry-after", "1"), ("x-inferno-attempts", str(len(tries)))])
        detail = f": {last_error.message}" if last_error else ""
        raise NoBackendAvailable(f"All {len(tries)} node(s) tried for this request failed{detail}")

    def _note_failure(self, node: Node, message: str, kind: str) -> None:
        node.failures += 1
        node.last_error = message
        self._metrics.upstream_errors.labels(kind).inc()
        log.warning("node %s failed: %s", node.id, message)

    async def _relay(self, resp: UpstreamResponse, node: Node) -> AsyncIterator[bytes]:
        ended_cleanly = True
        try:
            async for chunk in resp.iter_chunks(idle_timeout=self._idle_timeout):
                ended_cleanly = chunk.endswith(b"\n\n")
                yield chunk
        except UpstreamError as exc:
            self._note_failure(node, exc.message, exc.code)
            self._metrics.stream_errors.inc()
            error = exc if isinstance(exc, UpstreamTimeout) else UpstreamError(
                f"The node serving this stream failed mid-response: {exc.message}")
            # Close a half-sent event first so the error parses as an event of its own.
            yield (b"" if ended_cleanly else b"\n\n") + b"data: " + error.to_json() + b"\n\n"
        finally:
            resp.close()
            node.outstanding -= 1


def _meta(node: Node, attempt: int) -> list[tuple[str, str]]:
    return [("x-inferno-backend", node.id), ("x-inferno-attempts", str(attempt))]
