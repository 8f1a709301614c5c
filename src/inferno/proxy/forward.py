"""Forwarding one request to a node, with failover while nothing has reached the client.

An attempt may move to the next node only before the first byte goes out, and only when
the failure says another attempt may succeed (``exc.retryable`` of the error class): a
connect failure, a reset or timeout before the response completes (non-streaming) or
before headers (streaming), or a 429/500/502/503/504 answer. Every retry is paid for from
the :class:`RetryBudget`, and one deadline covers all attempts.

A stream is complete only when the node sent ``data: [DONE]``: a close, reset, idle
timeout or a half event without it (whatever the upstream's framing: a close-delimited
body ends "cleanly" when its server dies) ends the client's stream with an in-band
``data: {"error": ...}`` event and no ``[DONE]``, so OpenAI clients raise instead of
silently returning a truncated answer. Such a stream is counted in
``inferno_proxy_streams_cut_total{reason}`` and its :class:`Relay` says ``cut`` to the
request log. The relay forwards whole events only (a partial one is held until it
completes), so a cut never leaves half an event before the error, and nothing after
``[DONE]`` is relayed.

Error text that reaches a client never names a node's address: the client learns the
kind of failure, the log (warning, with node id and address) the details.

The request body is forwarded as the client sent it (never re-serialised); only the
headers the node needs travel, never the client's credentials.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import orjson

from inferno.core.errors import (
    NoBackendAvailable,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from inferno.net import (
    EVENT_ENDS,
    SSE_DONE,
    HttpClient,
    Response,
    StreamingResponse,
    UpstreamResponse,
    last_event_end,
)
from inferno.proxy.health.passive import PassiveHealth
from inferno.proxy.metrics import ProxyMetrics
from inferno.proxy.pool import Node
from inferno.proxy.retry import RetryBudget

log = logging.getLogger("inferno.proxy")

# 500 too: an inference node's internal error is rarely the request's fault, and another
# node usually answers; 4xx are never retried.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_FORWARDED = frozenset((b"content-type", b"accept", b"x-request-id", b"traceparent",
                        b"tracestate"))

# The [DONE] event (at the start of a block or of a line: _done_end checks). A raw CR or
# LF never occurs inside a JSON data line, so "[DONE]" in a completion's text cannot match.
_DONE_EVENT: Final = re.compile(rb"data: ?\[DONE\](?:\r\n|\n|\r(?!\n))(?:\r\n|\n|\r)")
_MAX_EVENT: Final = 4 * 1024 * 1024  # one event held back longer than this: malformed
_MAX_DRAIN: Final = 64 * 1024  # bytes read (and dropped) after [DONE] to keep the socket

# Why a stream was cut: the ``reason`` label of inferno_proxy_streams_cut_total and the
# suffix of the request log's error_code (``stream_cut:<reason>``).
CUT_REASONS: Final = ("closed", "reset", "idle_timeout", "malformed")


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    response: float  # to response headers (a non-streamed answer is sent whole)
    stream_idle: float


class Forwarder:
    def __init__(
        self,
        client: HttpClient,
        metrics: ProxyMetrics,
        health: PassiveHealth,
        budget: RetryBudget,
        timeouts: Timeouts,
        *,
        max_attempts: int,
        on_release: Callable[[], None] = lambda: None,
        on_failover: Callable[[Node, Node], None] | None = None,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._health = health
        self._budget = budget
        self._t = timeouts
        self._max_attempts = max_attempts
        self._on_release = on_release
        self._on_failover = on_failover  # (from, to): the self-healing timeline
        self._cut = {r: metrics.streams_cut.labels(r) for r in CUT_REASONS}

    def _release(self, node: Node) -> None:
        node.outstanding -= 1
        self._on_release()

    async def forward(
        self,
        target: str,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        nodes: Sequence[Node],
        stream: bool,
        *,
        deadline: float,
        route: str,
    ) -> Response | StreamingResponse:
        fwd = [(k, v) for k, v in headers if k in _FORWARDED]
        self._budget.record_request()
        attempts = 0
        last_error: UpstreamError | None = None
        last_reply: tuple[int, bytes, str] | None = None
        deadline_passed = False
        prev: Node | None = None
        for node in nodes:
            if attempts >= self._max_attempts:
                break
            now = time.monotonic()
            if now >= deadline:
                last_error = UpstreamTimeout("The request deadline passed.")
                deadline_passed = True
                break
            if attempts and not self._budget.try_retry():
                break
            was_open = node.breaker.state == "open"
            if not node.breaker.acquire(now):
                continue  # its single half-open probe is already out
            if was_open:  # its ejection is over: this attempt is the half-open probe
                self._health.probing(node)
            if prev is not None:
                self._metrics.failovers.inc()
                if self._on_failover is not None:
                    self._on_failover(prev, node)
            prev = node
            attempts += 1
            self._metrics.attempts.inc()
            node.outstanding += 1
            node.requests += 1
            handed_off = False
            try:
                resp = await self._client.request(
                    node.host,
                    node.port,
                    "POST",
                    target,
                    headers=fwd,
                    body=body,
                    connect_timeout=min(self._t.connect, deadline - now),
                    header_timeout=min(self._t.response, deadline - now),
                )
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
                    return StreamingResponse(Relay(self, resp, node), headers=meta)
                payload = await resp.read()
                resp.close()
                ctype = resp.header("content-type") or "application/json"
                if resp.close_delimited and resp.status == 200 and not _whole(payload, ctype):
                    # Framed by the close: a node that died mid-body looks complete here.
                    raise UpstreamProtocolError(
                        "The node's response body was cut short (close-delimited, not valid JSON)."
                    )
                self._record_status(node, resp.status)
                return Response(resp.status, payload, headers=meta, content_type=ctype)
            except UpstreamError as exc:
                self._failure(node, exc)
                last_error = exc
                if not exc.retryable:
                    break
            except BaseException:
                node.breaker.release_probe()  # cancelled (client left): no verdict
                raise
            finally:
                if not handed_off:
                    self._release(node)
        return self._give_up(attempts, last_error, last_reply, deadline_passed)

    def _give_up(
        self,
        attempts: int,
        last_error: UpstreamError | None,
        last_reply: tuple[int, bytes, str] | None,
        deadline_passed: bool = False,
    ) -> Response:
        # The client should not retry at once what the gateway already retried.
        extra = [("x-inferno-attempts", str(attempts)), ("x-should-retry", "false")]
        if last_reply is not None:
            status, payload, ctype = last_reply
            return Response(
                status,
                payload,
                content_type=ctype or "application/json",
                headers=[("retry-after", "1"), *extra],
            )
        err: UpstreamError | NoBackendAvailable
        if attempts == 0:
            err = NoBackendAvailable("No node could take this request right now.", retry_after=1)
        elif isinstance(last_error, UpstreamTimeout):
            err = UpstreamTimeout(
                "The request deadline passed before a node could answer."
                if deadline_passed
                else f"All {attempts} node(s) tried for this request failed: timed out."
            )
        else:
            detail = f": {_kind(last_error)}" if last_error else ""
            err = NoBackendAvailable(
                f"All {attempts} node(s) tried for this request failed{detail}.", retry_after=1
            )
        return Response(err.status_code, err.to_json(), headers=[*err.headers(), *extra])

    def _record_status(self, node: Node, status: int) -> None:
        if status >= 500:
            self._health.failure(node, f"HTTP {status}")
            self._metrics.upstream_errors.labels("status").inc()
        else:
            self._health.success(node)

    def _failure(self, node: Node, exc: UpstreamError) -> None:
        # The details (addresses, OS errors) are for operators: the client gets _kind().
        log.warning("node %s (%s) failed: %s", node.id, node.address, exc.message)
        self._metrics.upstream_errors.labels(exc.code).inc()
        self._health.failure(node, exc.message)


class Relay:
    """One node's SSE body, relayed event by event to the client.

    Complete only on ``data: [DONE]``; anything else ends with an error event and
    :attr:`cut` names why (see :data:`CUT_REASONS`). The hot path per chunk is two
    C-level checks (does it end an event; does it contain ``[DONE]``); only a chunk that
    splits an event or carries ``[DONE]`` takes the slower path.
    """

    __slots__ = ("_fwd", "_held", "_idle", "_last", "_node", "_resp", "_state", "cut", "sent")

    def __init__(self, fwd: Forwarder, resp: UpstreamResponse, node: Node) -> None:
        self._fwd = fwd
        self._resp = resp
        self._node = node
        self._idle = fwd._t.stream_idle
        self._held = b""  # the start of an event not complete yet (never relayed)
        self._last = b""  # the last block relayed
        self._state = 0  # 0 relaying, 1 [DONE] seen (drain), 2 finished
        self.cut: str | None = None
        self.sent = 0  # bytes relayed to the client

    @property
    def complete(self) -> bool:
        """The node sent ``[DONE]`` (whatever came, or failed, after it)."""
        return self._state != 0 and self.cut is None

    def __aiter__(self) -> Relay:
        return self

    async def __anext__(self) -> bytes:
        if self._state:
            if self._state == 1:
                await self._drain()
            raise StopAsyncIteration
        while True:
            try:
                chunk = await self._resp.next_chunk(self._idle)
            except UpstreamError as exc:
                return self._end_cut(_cut_reason(exc), exc)
            if chunk is None:  # the body ended, without [DONE]
                if not self._held and b'data: {"error"' in self._last:
                    # The node ended with an error event of its own: the client raises on
                    # it already; not a cut, and no second error event.
                    self._finish(verdict=True)
                    raise StopAsyncIteration
                reason = "malformed" if self._held else "closed"
                return self._end_cut(
                    reason,
                    UpstreamProtocolError(
                        "The upstream ended the stream without [DONE]"
                        + (" inside an event." if self._held else ".")
                    ),
                )
            held = self._held
            if held:
                chunk = held + chunk
                self._held = b""
            if not chunk.endswith(EVENT_ENDS):
                split = last_event_end(chunk)
                self._held = chunk[split:]
                chunk = chunk[:split]
                if len(self._held) > _MAX_EVENT:
                    return self._end_cut(
                        "malformed",
                        UpstreamProtocolError(
                            "The upstream sent an SSE event larger than the proxy accepts."
                        ),
                    )
                if not chunk:
                    continue
            if b"[DONE]" in chunk and (end := _done_end(chunk)) >= 0:
                chunk = chunk[:end]  # anything after [DONE] is not relayed
                self._state = 1
            self.sent += len(chunk)
            self._last = chunk
            return chunk

    async def _drain(self) -> None:
        """After [DONE]: read what the node still sends (its chunked terminator), so the
        connection can go back to the pool; a failure now no longer matters."""
        read = 0
        try:
            while (chunk := await self._resp.next_chunk(self._idle)) is not None:
                read += len(chunk)
                if read > _MAX_DRAIN:
                    break  # _finish closes the socket: it cannot be reused
        except UpstreamError:
            pass
        self._finish(verdict=True)

    def _end_cut(self, reason: str, exc: UpstreamError) -> bytes:
        fwd, node = self._fwd, self._node
        self.cut = reason
        self._held = b""  # a half event never reaches the client
        fwd._cut[reason].inc()
        fwd._failure(node, exc)
        log.warning(
            "stream from node %s (%s) cut (%s) after %d bytes",
            node.id,
            node.address,
            reason,
            self.sent,
        )
        self._finish(verdict=True, ok=False)
        error = (
            UpstreamTimeout(
                "The node serving this stream stopped sending; the answer is incomplete."
            )
            if reason == "idle_timeout"
            else UpstreamError(
                f"The node serving this stream failed mid-response ({_CUT_TEXT[reason]}); "
                "the answer is incomplete."
            )
        )
        return b"data: " + error.to_json() + b"\n\n"

    def _finish(self, *, verdict: bool, ok: bool = True) -> None:
        if self._state == 2:
            return
        self._state = 2
        node = self._node
        if verdict and ok:
            self._fwd._health.success(node)
        elif not verdict:
            node.breaker.release_probe()
        self._resp.close()
        self._fwd._release(node)

    async def aclose(self) -> None:
        # Before [DONE] the client went away mid-stream: no verdict on the node. Closing
        # an unfinished response closes its socket, which aborts the generation there.
        self._finish(verdict=self._state != 0)


_CUT_TEXT: Final = {
    "closed": "connection closed",
    "reset": "connection reset",
    "idle_timeout": "timed out",
    "malformed": "malformed stream",
}


def _cut_reason(exc: UpstreamError) -> str:
    if isinstance(exc, UpstreamTimeout):
        return "idle_timeout"
    cause = exc.__cause__
    if isinstance(cause, ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
        return "reset"
    if (
        isinstance(exc, UpstreamProtocolError)
        and cause is not None
        and not isinstance(cause, OSError)
    ):
        return "malformed"  # the HTTP parser refused the bytes
    return "closed"


def _kind(exc: UpstreamError) -> str:
    """What a client may learn of a failed attempt: the kind, never the node's details."""
    if isinstance(exc, UpstreamConnectError):
        return "could not connect"
    if isinstance(exc, UpstreamTimeout):
        return "timed out"
    if isinstance(exc, UpstreamProtocolError):
        return "invalid or incomplete response"
    return "upstream error"


def _whole(payload: bytes, content_type: str) -> bool:
    """Whether a close-delimited body is plausibly complete (JSON ones must parse)."""
    if "json" not in content_type:
        return True  # nothing cheap to check it against
    try:
        orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    return True


def _meta(node: Node, attempt: int, route: str) -> list[tuple[str, str]]:
    return [
        ("x-inferno-backend", node.id),
        ("x-inferno-attempts", str(attempt)),
        ("x-inferno-route", route),
    ]


def _done_end(block: bytes) -> int:
    """The offset just past the ``[DONE]`` event in an event-aligned block, or -1."""
    n = len(SSE_DONE)
    if block.endswith(SSE_DONE) and (len(block) == n or block[-n - 1] in b"\r\n"):
        return len(block)  # the usual case: the block ends with it (no regex scan)
    # Scan only from just before the first "[DONE]": a whole stream can arrive as one block.
    for m in _DONE_EVENT.finditer(block, max(0, block.find(b"[DONE]") - 6)):
        start = m.start()
        if start == 0 or block[start - 1] in b"\r\n":
            return m.end()
    return -1
