"""Forwarding one request to a node, with failover while nothing has reached the client.

An attempt may move to the next node only before the first byte goes out: on a connect
failure, a reset or timeout before the response completes (non-streaming) or before
headers (streaming), or a 429/500/502/503/504 answer. Every retry is paid for from the
:class:`RetryBudget`, and one deadline covers all attempts. Once a stream has started, a
failure ends it with an in-band ``data: {"error": ...}`` event and no ``[DONE]``, so
OpenAI clients raise instead of silently returning a truncated answer.

The request body is forwarded as the client sent it (never re-serialised); only the
headers the node needs travel, never the client's credentials.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from inferno.core.errors import (
    NoBackendAvailable,
    UpstreamError,
    UpstreamTimeout,
)
from inferno.net import HttpClient, Response, StreamingResponse, UpstreamResponse
from inferno.proxy.health.passive import PassiveHealth
from inferno.proxy.metrics import ProxyMetrics
from inferno.proxy.pool import Node
from inferno.proxy.retry import RetryBudget

log = logging.getLogger("inferno.proxy")

# 500 too: an inference node's internal error is rarely the request's fault, and another
# node usually answers; 4xx are never retried.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_FORWARDED = frozenset((b"content-type", b"accept", b"x-request-id"))


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    response: float  # to response headers (a non-streamed answer is sent whole)
    stream_idle: float


class Forwarder:
    def __init__(self, client: HttpClient, metrics: ProxyMetrics, health: PassiveHealth,
                 budget: RetryBudget, timeouts: Timeouts, *, max_attempts: int,
                 on_release: Callable[[], None] = lambda: None) -> None:
        self._client = client
        self._metrics = metrics
        self._health = health
        self._budget = budget
        self._t = timeouts
        self._max_attempts = max_attempts
        self._on_release = on_release

    def _release(self, node: Node) -> None:
        node.outstanding -= 1
        self._on_release()

    async def forward(self, target: str, headers: Sequence[tuple[bytes, bytes]], body: bytes,
                      nodes: Sequence[Node], stream: bool, *, deadline: float,
                      route: str) -> Response | StreamingResponse:
        fwd = [(k, v) for k, v in headers if k in _FORWARDED]
        self._budget.record_request()
        attempts = 0
        last_error: UpstreamError | None = None
        last_reply: tuple[int, bytes, str] | None = None
        for node in nodes:
            if attempts >= self._max_attempts:
                break
            now = time.monotonic()
            if now >= deadline:
                last_error = UpstreamTimeout("The request deadline passed before a node "
                                             "could answer.")
                break
            if attempts and not self._budget.try_retry():
                break
            if not node.breaker.acquire(now):
                continue  # its single half-open probe is already out
            attempts += 1
            self._metrics.attempts.inc()
            node.outstanding += 1
            node.requests += 1
            handed_off = False
            try:
                resp = await self._client.request(
                    node.host, node.port, "POST", target, headers=fwd, body=body,
                    connect_timeout=min(self._t.connect, deadline - now),
                    header_timeout=min(self._t.response, deadline - now))
                node.observe_ttft(time.monotonic() - now)
                if resp.status in RETRY_STATUSES:
                    payload = await resp.read()
                    resp.close()
                    last_reply = (resp.status, payload, resp.header("content-type") or "")
                    self._record_status(node, resp.status)
                    continue
                meta = _meta(node, attempts, route)
                if stream and resp.status == 200:
                    handed_off = True
                    return StreamingResponse(self._relay(resp, node), headers=meta)
                payload = await resp.read()
                resp.close()
                self._record_status(node, resp.status)
                return Response(resp.status, payload, headers=meta,
                                content_type=resp.header("content-type") or "application/json")
            except UpstreamError as exc:
                self._failure(node, exc.message, exc.code)
                last_error = exc
            except BaseException:
                node.breaker.release_probe()  # cancelled (client left): no verdict
                raise
            finally:
                if not handed_off:
                    self._release(node)
        return self._give_up(attempts, last_error, last_reply)

    def _give_up(self, attempts: int, last_error: UpstreamError | None,
                 last_reply: tuple[int, bytes, str] | None) -> Response:
        # The client should not retry at once what the gateway already retried.
        extra = [("x-inferno-attempts", str(attempts)), ("x-should-retry", "false")]
        if last_reply is not None:
            status, payload, ctype = last_reply
            return Response(status, payload, content_type=ctype or "application/json",
                            headers=[("retry-after", "1"), *extra])
        if attempts == 0:
            err: UpstreamError | NoBackendAvailable = NoBackendAvailable(
                "No node could take this request right now.", retry_after=1)
        elif isinstance(last_error, UpstreamTimeout):
            err = last_error
        else:
            detail = f": {last_error.message}" if last_error else ""
            err = NoBackendAvailable(
                f"All {attempts} node(s) tried for this request failed{detail}", retry_after=1)
        return Response(err.status_code, err.to_json(), headers=[*err.headers(), *extra])

    def _record_status(self, node: Node, status: int) -> None:
        if status >= 500:
            self._failure(node, f"HTTP {status}", "status")
        else:
            self._health.success(node)

    def _failure(self, node: Node, message: str, kind: str) -> None:
        self._metrics.upstream_errors.labels(kind).inc()
        self._health.failure(node, message)

    async def _relay(self, resp: UpstreamResponse, node: Node) -> AsyncIterator[bytes]:
        ended_cleanly = True
        verdict = False
        try:
            async for chunk in resp.iter_chunks(idle_timeout=self._t.stream_idle):
                ended_cleanly = chunk.endswith(b"\n\n")
                yield chunk
            self._health.success(node)
            verdict = True
        except UpstreamError as exc:
            self._failure(node, exc.message, exc.code)
            verdict = True
            self._metrics.stream_errors.inc()
            error = exc if isinstance(exc, UpstreamTimeout) else UpstreamError(
                f"The node serving this stream failed mid-response: {exc.message}")
            # Close a half-sent event first so the error parses as an event of its own.
            yield (b"" if ended_cleanly else b"\n\n") + b"data: " + error.to_json() + b"\n\n"
        finally:
            if not verdict:
                node.breaker.release_probe()
            resp.close()
            self._release(node)


def _meta(node: Node, attempt: int, route: str) -> list[tuple[str, str]]:
    return [("x-inferno-backend", node.id), ("x-inferno-attempts", str(attempt)),
            ("x-inferno-route", route)]
