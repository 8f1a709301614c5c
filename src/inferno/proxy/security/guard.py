"""The per-request pipeline around forwarding, and the one log row every request leaves.

authenticate -> parse and validate -> model permission -> rate-limit admission -> cache
lookup -> forward -> settle tokens, store in the cache, record the row. A streamed answer
is observed chunk by chunk by :class:`ObservedStream`, which records the row when the
stream ends, fails or the client goes away (``aclose``), exactly once.

For streams without ``stream_options`` the proxy asks the node for the final usage chunk
by splicing ``"stream_options":{"include_usage":true},`` into the body's first bytes (no
re-serialisation), then drops that chunk before it reaches the client.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import orjson

from inferno.core.errors import InfernoError, RateLimited, UpstreamError
from inferno.net import EVENT_ENDS, Request, Response, StreamingResponse, last_event_end
from inferno.proxy.accounting import (
    Prices,
    RequestLog,
    new_request_id,
    new_row,
    payload_text,
)
from inferno.proxy.app import _parse, _routing_fields
from inferno.proxy.cache import Entry, ResponseCache, cache_key, wants_cache
from inferno.proxy.forward import Relay
from inferno.proxy.security.auth import Authenticator, check_model
from inferno.proxy.security.metrics import SecurityMetrics
from inferno.proxy.security.ratelimit import Bucket, Limits, Plan
from inferno.proxy.security.validate import reserve_tokens, validate_request

Forward = Callable[[Request, str, dict[str, Any], str, bool, str | None, bytes],
                   Awaitable[Response | StreamingResponse]]
_INJECT = b'{"stream_options":{"include_usage":true},'
_EVENT_SPLIT = re.compile(rb"(\r\n\r\n|\n\n|\r\r)")
_CACHE_ENTRY_MAX = 4 * 1024 * 1024


class Limiter(Protocol):
    async def admit(self, buckets: list[Bucket]) -> float: ...

    def settle(self, buckets: list[Bucket], delta: float) -> None: ...


class RequestGuard:
    def __init__(self, auth: Authenticator, limits: Limits, limiter: Limiter,
                 log: RequestLog, metrics: SecurityMetrics, *, prices: Prices | None = None,
                 cache: ResponseCache | None = None, default_reserve: int = 256) -> None:
        self.auth = auth
        self._limits = limits
        self._limiter = limiter
        self._log = log
        self._metrics = metrics
        self._prices = prices or Prices()
        self._cache = cache
        self._default_reserve = default_reserve
        self._limited = metrics.rate_limited

    async def handle(self, req: Request, path: str, forward: Forward
                     ) -> Response | StreamingResponse:
        started = time.perf_counter()
        now = time.time()
        row = new_row(new_request_id(now), now, path)
        plan: Plan | None = None
        handed_off = False
        try:
            principal = self.auth.authenticate(req)
            row["key_id"] = principal.key_id
            data = _parse(req.body)
            model, stream, user = _routing_fields(data)
            row["model"] = model
            row["stream"] = stream
            validate_request(data)
            check_model(principal, model)
            body = req.body
            if self._log.log_payloads:
                row["request_body"] = payload_text(body)
            reserve, prompt_estimate = reserve_tokens(data, body, self._default_reserve)
            plan = self._limits.plan(principal, model, reserve)
            if plan is not None:
                wait = await self._limiter.admit(plan.all)
                if wait > 0:
                    plan = None
                    self._limited.inc()
                    raise RateLimited("Rate limit reached for this API key; retry after "
                                      f"{max(1, round(wait))} s.", retry_after=min(wait, 60.0))
            ckey = None
            if self._cache is not None and wants_cache(data, req.header("x-inferno-cache")):
                control = req.header("cache-control") or ""
                if "no-store" not in control:
                    ckey = cache_key(path, principal.key_id, data)
                if "no-cache" in control or "no-store" in control:
                    self._metrics.cache.labels("bypass").inc()
                else:
                    entry = await self._cache.get(ckey or cache_key(path, principal.key_id, data))
                    if entry is not None:
                        return self._from_cache(entry, row, plan, started)
            injected = False
            if stream and "stream_options" not in data and path != "/v1/embeddings" \
                    and body[:1] == b"{":
                body = _INJECT + body[1:]
                data["stream_options"] = {"include_usage": True}
                injected = True
            resp = await forward(req, path, data, model, stream, user, body)
            headers = resp.headers if resp.headers is not None else []
            resp.headers = headers
            for k, v in headers:
                if k == "x-inferno-backend":
                    row["node"] = v
                elif k == "x-inferno-attempts":
                    row["attempts"] = int(v) if v.isdigit() else 0
            headers.append(("x-request-id", row["request_id"]))
            if 300 <= resp.status < 400:
                raise UpstreamError("The node answered with a redirect; the proxy does not "
                                    "follow redirects.")
            if isinstance(resp, StreamingResponse):
                resp.chunks = ObservedStream(self, resp.chunks, row, plan, started,
                                             ckey if resp.status == 200 else None, injected,
                                             prompt_estimate)
                handed_off = True
                return resp
            row["status"] = resp.status
            prompt, completion = _usage(resp.body) if resp.status == 200 else (0, 0)
            if self._log.log_payloads:
                row["response_body"] = payload_text(resp.body)
            if ckey is not None and resp.status == 200 and self._cache is not None \
                    and len(resp.body) <= _CACHE_ENTRY_MAX:
                self._cache.put(ckey, Entry(resp.body, resp.content_type, False, prompt,
                                            completion, time.time()))
            self.finish(row, plan, started, prompt, completion)
            return resp
        except InfernoError as exc:
            if not handed_off:
                row["status"] = exc.status_code
                row["error_code"] = exc.code
                self.finish(row, plan, started, 0, 0)
            raise
        except asyncio.CancelledError:
            if not handed_off:
                row["status"] = 499
                row["error_code"] = "client_closed_request"
                self.finish(row, plan, started, 0, 0)
            raise
        except Exception:
            if not handed_off:
                row["status"] = 500
                row["error_code"] = "internal_error"
                self.finish(row, plan, started, 0, 0)
            raise

    def _from_cache(self, entry: Entry, row: dict[str, Any], plan: Plan | None,
                    started: float) -> Response | StreamingResponse:
        row["status"] = 200
        row["cache_hit"] = True
        row["node"] = "cache"
        if self._log.log_payloads:
            row["response_body"] = payload_text(entry.body)
        self.finish(row, plan, started, entry.prompt_tokens, entry.completion_tokens,
                    ttft=True)
        headers = [("x-inferno-cache", "hit"), ("x-inferno-backend", "cache"),
                   ("x-inferno-attempts", "0"), ("x-request-id", row["request_id"])]
        if entry.stream:
            return StreamingResponse(_once(entry.body), headers=headers,
                                     content_type=entry.content_type)
        return Response(200, entry.body, headers=headers, content_type=entry.content_type)

    def finish(self, row: dict[str, Any], plan: Plan | None, started: float, prompt: int,
               completion: int, *, ttft: bool = False) -> None:
        elapsed = (time.perf_counter() - started) * 1000.0
        row["latency_ms"] = elapsed
        if ttft or (row["ttft_ms"] is None and not row["stream"]):
            row["ttft_ms"] = elapsed
        row["prompt_tokens"] = prompt
        row["completion_tokens"] = completion
        row["cost"] = self._prices.cost(row["model"], prompt, completion)
        if plan is not None and plan.tokens:
            self._limiter.settle(plan.tokens, prompt + completion - plan.reserved)
        self._log.record(row)

    def cache_stream(self, key: bytes, body: bytes, prompt: int, completion: int) -> None:
        if self._cache is not None and len(body) <= _CACHE_ENTRY_MAX:
            self._cache.put(key, Entry(body, "text/event-stream", True, prompt, completion,
                                       time.time()))


class ObservedStream:
    """Relays a node's SSE stream, noting TTFT, usage, ``[DONE]`` and errors on the way."""

    __slots__ = (
        "_buf",
        "_cache_key",
        "_completion",
        "_done",
        "_ended",
        "_error",
        "_events",
        "_finished",
        "_guard",
        "_injected",
        "_inner",
        "_kept",
        "_kept_bytes",
        "_plan",
        "_prompt",
        "_relay",
        "_row",
        "_started",
        "_usage_seen",
    )

    def __init__(self, guard: RequestGuard, inner: AsyncIterator[bytes], row: dict[str, Any],
                 plan: Plan | None, started: float, cache_key: bytes | None, injected: bool,
                 prompt_estimate: int) -> None:
        self._guard = guard
        self._inner = inner
        # Behind the forwarder's Relay its verdict says whether [DONE] came: no scan here.
        self._relay = inner if isinstance(inner, Relay) else None
        self._row = row
        self._plan = plan
        self._started = started
        self._cache_key = cache_key
        self._injected = injected
        self._buf = b""
        self._done = self._error = self._ended = self._finished = self._usage_seen = False
        self._events = 0
        self._prompt = prompt_estimate
        self._completion = 0
        keep = cache_key is not None or guard._log.log_payloads
        self._kept: list[bytes] | None = [] if keep else None
        self._kept_bytes = 0

    def __aiter__(self) -> ObservedStream:
        return self

    async def __anext__(self) -> bytes:
        if self._ended:
            self._finish(None)
            raise StopAsyncIteration
        try:
            chunk = await self._inner.__anext__()
        except StopAsyncIteration:
            self._ended = True
            if self._buf:  # a trailing partial event: pass it on as it is
                rest, self._buf = self._buf, b""
                return rest
            self._finish(None)
            raise
        except asyncio.CancelledError:
            self._finish(499)
            raise
        except BaseException:
            self._error = True
            self._finish(None)
            raise
        return self._see(chunk)

    def _see(self, chunk: bytes) -> bytes:
        if self._row["ttft_ms"] is None:
            self._row["ttft_ms"] = (time.perf_counter() - self._started) * 1000.0
        data = self._buf + chunk if self._buf else chunk
        if data.endswith(EVENT_ENDS):  # always, behind the forwarder's Relay
            complete = data
            self._buf = b""
        else:
            cut = last_event_end(data)
            if cut == 0:
                self._buf = data
                return b""
            complete = data[:cut]
            self._buf = data[cut:]
        self._events += complete.count(b"data: ")
        if self._relay is None and b"[DONE]" in complete:
            self._done = True
        if b'data: {"error"' in complete:
            self._error = True
            self._events -= complete.count(b'data: {"error"')
        if b'"usage"' in complete:
            complete = self._take_usage(complete)
        kept = self._kept
        if kept is not None:
            self._kept_bytes += len(complete)
            if self._kept_bytes <= _CACHE_ENTRY_MAX:
                kept.append(complete)
            else:
                self._kept = None
        return complete

    def _take_usage(self, complete: bytes) -> bytes:
        # Split keeping each event's own terminator: nodes may end events with \n\n,
        # \r\n\r\n or \r\r, and what is relayed must keep the node's framing.
        parts = _EVENT_SPLIT.split(complete)  # event, end, event, end, ..., tail
        out = []
        for i in range(0, len(parts), 2):
            event = parts[i]
            end = parts[i + 1] if i + 1 < len(parts) else b""
            if b'"usage"' in event and event.startswith(b"data: {"):
                try:
                    obj = orjson.loads(event[6:])
                except orjson.JSONDecodeError:
                    obj = None
                usage = obj.get("usage") if isinstance(obj, dict) else None
                if isinstance(usage, dict):
                    self._usage_seen = True
                    self._prompt = int(usage.get("prompt_tokens") or 0)
                    self._completion = int(usage.get("completion_tokens") or 0)
                    if self._injected and obj.get("choices") == []:
                        self._events -= 1
                        continue  # the client did not ask for it
            out.append(event + end)
        return b"".join(out)

    def _finish(self, status: int | None) -> None:
        if self._finished:
            return
        self._finished = True
        row = self._row
        # Behind a Relay, its verdict: complete only on the node's [DONE]; else why it was cut.
        relay = self._relay
        done = self._done if relay is None else relay.complete
        cut = None if relay is None else relay.cut
        if done:
            self._events -= 1  # the [DONE] event
        ok = done and not self._error
        if status is None:
            status = 200 if ok else 502
        row["status"] = status
        if status == 499:
            row["error_code"] = "client_closed_request"
        elif cut is not None:
            row["error_code"] = f"stream_cut:{cut}"  # ended without [DONE]: see CUT_REASONS
        elif status != 200:
            row["error_code"] = "stream_error"
        if not self._usage_seen:
            # No usage chunk: roughly one event per token, of the events the client got,
            # less the role chunk and, in a complete stream, the finish chunk.
            self._completion = max(0, self._events - (2 if ok else 1))
        kept = self._kept
        if kept is not None:
            body = b"".join(kept)
            if self._cache_key is not None and ok and status == 200:
                self._guard.cache_stream(self._cache_key, body, self._prompt, self._completion)
            if self._guard._log.log_payloads:
                row["response_body"] = payload_text(body)
        self._guard.finish(row, self._plan, self._started, self._prompt, self._completion)

    async def aclose(self) -> None:
        self._finish(None if self._ended else 499)
        aclose = getattr(self._inner, "aclose", None)
        if aclose is not None:
            await aclose()


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


def _usage(body: bytes) -> tuple[int, int]:
    if b'"usage"' not in body:
        return 0, 0
    try:
        usage = orjson.loads(body).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return 0, 0
    if not isinstance(usage, dict):
        return 0, 0
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    return (prompt if isinstance(prompt, int) else 0,
            completion if isinstance(completion, int) else 0)
