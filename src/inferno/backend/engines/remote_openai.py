"""Remote providers behind a node: any OpenAI-compatible API (vLLM, Ollama, llama-server,
OpenAI), and the shared machinery the Gemini engine builds on.

A remote engine is an :class:`~inferno.backend.engines.base.Engine` that also has
``generate_chat``: chat messages are forwarded as messages (the provider applies its own
template). Upstream requests always stream (``stream_options.include_usage``), so a
client's stream is translated chunk by chunk and a non-streaming answer is collected by
the node as for local engines. At most ``parallel`` requests are in flight to the provider;
the rest wait in FIFO order, which is the queue depth the node reports (hybrid routing
offloads to a cloud node when the local node's queue is long, see the node's telemetry).

Transport: ``http://`` URLs use Inferno's pooled :class:`~inferno.net.HttpClient`;
``https://`` URLs (real clouds) use ``httpx2`` (the ``remote`` extra), imported only then.

Errors: provider statuses map onto :mod:`inferno.core.errors` (400 -> InvalidRequest or
ContextLengthExceeded, 404 -> ModelNotFound, 413 -> PayloadTooLarge, 429 -> RateLimited
with Retry-After, 401/403 -> a 502 UpstreamError saying the *node's* credentials were
refused - the client's request was fine and another node may serve it - 408/504 ->
UpstreamTimeout, other 5xx -> UpstreamError, unparsable bodies -> UpstreamProtocolError).
The API key travels only in a request header; every provider message is scrubbed of it
before it can reach an error body or a log line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson

from inferno.backend.engines._slots import Slots
from inferno.backend.engines.base import (
    GENERATIVE,
    Capability,
    Chunk,
    EngineStats,
    Feature,
    FinishReason,
    ModelInfo,
    SamplingParams,
)
from inferno.core.errors import (
    ConfigError,
    ContextLengthExceeded,
    InfernoError,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    RateLimited,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from inferno.net import HttpClient, SSEDecoder

log = logging.getLogger("inferno.backend.remote")
_MAX_ERROR_BODY = 64 * 1024


class RemoteResponse:
    """The parts of a streamed HTTP response the engines need, whichever transport."""

    def __init__(self, status: int, headers: dict[str, str], chunks: AsyncIterator[bytes],
                 closer: Any) -> None:
        self.status = status
        self.headers = headers
        self.chunks = chunks
        self._closer = closer

    async def read(self, limit: int = _MAX_ERROR_BODY) -> bytes:
        out = b""
        async for chunk in self.chunks:
            out += chunk
            if len(out) >= limit:
                break
        return out[:limit]

    async def aclose(self) -> None:
        res = self._closer()
        if asyncio.iscoroutine(res):
            await res


class RemoteHTTP:
    """POSTs JSON to ``base_url + path`` and streams the answer back (http or https)."""

    def __init__(self, base_url: str, *, timeout: float, connect_timeout: float = 10.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"remote_url must be an http:// or https:// URL, got {base_url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")
        self.base_url = f"{parts.scheme}://{parts.netloc}{self.base_path}"
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._client: HttpClient | None = None
        self._httpx: Any = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> RemoteResponse:
        headers = {"content-type": "application/json", "accept": "text/event-stream, "
                   "application/json", **headers}
        if self.scheme == "http":
            return await self._post_plain(path, body, headers)
        return await self._post_tls(path, body, headers)

    async def _post_plain(self, path: str, body: bytes, headers: dict[str, str]
                          ) -> RemoteResponse:
        if self._client is None:
            self._client = HttpClient()
        resp = await self._client.request(
            self.host, self.port, "POST", self.base_path + path, body=body,
            headers=[(k.encode(), v.encode()) for k, v in headers.items()],
            connect_timeout=self.connect_timeout, header_timeout=self.timeout)
        hdrs = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in resp.headers}
        return RemoteResponse(resp.status, hdrs, resp.iter_chunks(self.timeout), resp.close)

    async def _post_tls(self, path: str, body: bytes, headers: dict[str, str]
                        ) -> RemoteResponse:
        try:  # the second client, on purpose: TLS to clouds; net.HttpClient speaks plain HTTP
            import httpx2 as httpx
        except ImportError as exc:
            raise UpstreamConnectError("https:// providers need httpx2: "
                                       "pip install -e '.[remote]'") from exc
        if self._httpx is None:
            self._httpx = httpx.AsyncClient(timeout=httpx.Timeout(
                self.timeout, connect=self.connect_timeout))
        client = self._httpx
        request = client.build_request("POST", self.base_url + path, content=body,
                                       headers=headers)
        try:
            resp = await client.send(request, stream=True)
        except httpx.ConnectError as exc:
            raise UpstreamConnectError(f"Cannot connect to {self.host}:{self.port}.") from exc
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"{self.host} did not answer in time.") from exc
        except httpx.HTTPError as exc:
            raise UpstreamProtocolError(f"{self.host}: {type(exc).__name__}.") from exc

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.aiter_raw():
                    yield chunk
            except httpx.TimeoutException as exc:
                raise UpstreamTimeout(f"{self.host} stalled mid-answer.") from exc
            except httpx.HTTPError as exc:
                raise UpstreamProtocolError(f"{self.host} broke the answer off.") from exc

        return RemoteResponse(resp.status_code, {k.lower(): v for k, v in resp.headers.items()},
                              chunks(), resp.aclose)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        if self._httpx is not None:
            await self._httpx.aclose()


def scrub(text: str, secret: str | None) -> str:
    """``text`` without the secret (nor a long prefix of it, as some providers echo)."""
    if secret:
        text = text.replace(secret, "***")
        if len(secret) >= 12:
            text = text.replace(secret[:8], "***")
    return text


def provider_error(provider: str, status: int, body: bytes, headers: dict[str, str],
                   *, model: str, secret: str | None) -> InfernoError:
    """A provider's HTTP error as one of ours; the message never carries the key."""
    message, code, param = _error_fields(body)
    message = scrub(message, secret)[:500] or f"HTTP {status}"
    said = f"{provider} answered HTTP {status}: {message}"
    if status in (400, 422):
        context = "context" in (code or "").lower() or "context length" in message.lower()
        if context or "maximum context" in message.lower():
            return ContextLengthExceeded(said, param=param or "messages")
        return InvalidRequest(said, param=param)
    if status in (401, 403):
        return UpstreamError(f"{provider} refused this node's credentials (HTTP {status}); "
                             "the node's API key needs fixing.")
    if status == 404:
        return ModelNotFound(f"{provider} does not serve the model '{model}': {message}",
                             param="model")
    if status == 413:
        return PayloadTooLarge(said)
    if status == 429:
        retry = headers.get("retry-after")
        try:
            after = float(retry) if retry else None
        except ValueError:
            after = None
        return RateLimited(said, retry_after=after or 1.0)
    if status in (408, 504):
        return UpstreamTimeout(said)
    return UpstreamError(said)


def _error_fields(body: bytes) -> tuple[str, str | None, str | None]:
    """(message, code, param) from OpenAI, Gemini or Ollama style error bodies."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:300].decode("utf-8", "replace").strip(), None, None
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, str):
        return err, None, None
    if isinstance(err, dict):
        code = err.get("code")
        status = err.get("status")  # Gemini: "INVALID_ARGUMENT"
        param = err.get("param")
        return (str(err.get("message") or err.get("detail") or ""),
                str(code if isinstance(code, str) else status or "") or None,
                param if isinstance(param, str) else None)
    return str(err)[:300], None, None


class RemoteEngineBase:
    """What both remote engines share: info, admission (FIFO slots), stats, transport."""

    provider = "remote"
    features: frozenset[Feature] = frozenset()

    def __init__(self, *, base_url: str, model_id: str, remote_model: str,
                 api_key: str | None = None, parallel: int = 4, timeout: float = 300.0,
                 context_length: int = 4096, price_per_mtok_input: float = 0.0,
                 price_per_mtok_output: float = 0.0,
                 capabilities: frozenset[Capability] = GENERATIVE) -> None:
        self._http = RemoteHTTP(base_url, timeout=timeout)
        self._remote_model = remote_model
        self._key = api_key
        self._info = ModelInfo(
            id=model_id, path=f"{self._http.base_url} ({self.provider}: {remote_model})",
            context_length=context_length, owned_by=self.provider, capabilities=capabilities,
            price_per_mtok_input=price_per_mtok_input,
            price_per_mtok_output=price_per_mtok_output, features=self.features)
        self._slots = Slots(parallel)
        self._generated = 0
        self._prompted = 0

    def __repr__(self) -> str:  # never the key
        return f"<{type(self).__name__} {self._info.id} -> {self._http.base_url}>"

    @property
    def info(self) -> ModelInfo:
        return self._info

    def load(self) -> None:
        log.info("%s engine: model %s forwards to %s (%s)%s", self.provider, self._info.id,
                 self._http.base_url, self._remote_model,
                 " with an API key" if self._key else "")

    async def close(self) -> None:
        await self._http.aclose()

    def tokenize(self, text: str) -> list[int]:
        """An estimate (about 4 characters per token): the provider's tokenizer is remote."""
        return [0] * max(1, len(text) // 4)

    def render_chat(self, messages: Sequence[dict[str, Any]],
                    tools: Sequence[dict[str, Any]] | None = None) -> str:
        # Only used when the node has no generate_chat path; kept for the Engine contract.
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"

    def stats(self) -> EngineStats:
        return EngineStats(active=self._slots.active, queued=self._slots.queued,
                           capacity=self._slots.capacity,
                           tokens_generated=self._generated, prompt_tokens=self._prompted)

    def _headers(self) -> dict[str, str]:
        return {}

    async def _open(self, path: str, body: dict[str, Any]) -> RemoteResponse:
        """POST and check the status; the caller holds a slot and closes the response."""
        resp = await self._http.post(path, orjson.dumps(body), self._headers())
        if resp.status >= 400:
            try:
                raw = await resp.read()
            except InfernoError:
                raw = b""
            finally:
                await resp.aclose()
            raise provider_error(self.provider, resp.status, raw, resp.headers,
                                 model=self._remote_model, secret=self._key)
        return resp

    async def _stream(self, path: str, body: dict[str, Any], prompt_chars: int
                      ) -> AsyncGenerator[Chunk, None]:
        """Admission, the request, and the provider's events turned into Chunks."""
        resp: RemoteResponse | None = None
        async with self._slots.hold():
            try:
                resp = await self._open(path, body)
                decoder = SSEDecoder()
                prompt_tokens, completion, finish = 0, 0, None
                calls: list[dict[str, Any]] = []
                async for raw in resp.chunks:
                    for data in decoder.feed(raw):
                        if data == b"[DONE]":
                            continue
                        text, fin, usage = self._parse_event(data)
                        _merge_calls(calls, self._tool_deltas(data))
                        if usage is not None:
                            prompt_tokens, completion = usage
                        elif text:
                            completion += 1  # an estimate until the provider's usage arrives
                        finish = fin or finish
                        if text:
                            self._generated += 1
                            yield Chunk(text, prompt_tokens, completion)
                if finish is None:
                    raise UpstreamProtocolError(
                        f"{self.provider} ended the answer without a finish reason.")
                prompt_tokens = prompt_tokens or max(1, prompt_chars // 4)
                self._prompted += prompt_tokens
                yield Chunk("", prompt_tokens, completion, finish, tool_calls=tuple(calls))
            finally:
                if resp is not None:
                    await resp.aclose()

    def _parse_event(self, data: bytes) -> tuple[str, FinishReason | None, tuple[int, int] | None]:
        raise NotImplementedError

    def _tool_deltas(self, data: bytes) -> list[dict[str, Any]]:
        """The event's tool-call deltas, in OpenAI's streamed shape (``index`` absent:
        a whole new call)."""
        return []

    def _event_json(self, data: bytes) -> dict[str, Any]:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise UpstreamProtocolError(f"{self.provider} sent an unparsable event.") from exc
        if not isinstance(event, dict):
            raise UpstreamProtocolError(f"{self.provider} sent an event that is not an object.")
        if "error" in event:
            msg, _, _ = _error_fields(data)
            raise UpstreamError(f"{self.provider} failed mid-answer: "
                                f"{scrub(msg, self._key)[:300]}")
        return event


def _merge_calls(calls: list[dict[str, Any]], deltas: list[dict[str, Any]]) -> None:
    """Streamed tool-call deltas folded into whole calls (arguments arrive in pieces)."""
    for delta in deltas:
        index = delta.get("index")
        if not isinstance(index, int) or index >= len(calls) + 1 or index < 0:
            index = len(calls)
        if index == len(calls):
            calls.append({"id": "", "type": "function", "function": {"name": "",
                                                                      "arguments": ""}})
        call, fn = calls[index], delta.get("function") or {}
        if isinstance(delta.get("id"), str):
            call["id"] = delta["id"]
        if isinstance(fn.get("name"), str):
            call["function"]["name"] += fn["name"]
        if isinstance(fn.get("arguments"), str):
            call["function"]["arguments"] += fn["arguments"]


_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length"}


class RemoteOpenAIEngine(RemoteEngineBase):
    provider = "openai"
    # Passed on as sent: the provider enforces them (logprobs would need its per-token
    # entries translated, so they are refused rather than dropped).
    features: frozenset[Feature] = frozenset({"response_format", "logit_bias", "tools"})

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._key}"} if self._key else {}

    def _body(self, params: SamplingParams, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self._remote_model, **fields, "stream": True,
                                "stream_options": {"include_usage": True},
                                "temperature": params.temperature, "top_p": params.top_p}
        if params.max_tokens is not None:
            body["max_tokens"] = params.max_tokens
        if params.seed is not None:
            body["seed"] = params.seed
        if params.presence_penalty:
            body["presence_penalty"] = params.presence_penalty
        if params.frequency_penalty:
            body["frequency_penalty"] = params.frequency_penalty
        if params.response_format is not None:
            body["response_format"] = params.response_format
        if params.logit_bias:
            body["logit_bias"] = {str(tok): bias for tok, bias in params.logit_bias}
        if params.tools:
            body["tools"] = list(params.tools)
            if params.tool_choice is not None:
                body["tool_choice"] = params.tool_choice
            if params.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = params.parallel_tool_calls
        return body

    def generate_chat(self, messages: Sequence[dict[str, Any]],
                      params: SamplingParams) -> AsyncGenerator[Chunk, None]:
        chars = sum(len(m.get("content") or "") for m in messages)
        return self._stream("/chat/completions", self._body(params, messages=list(messages)),
                            chars)

    def generate(self, prompt: str, params: SamplingParams) -> AsyncGenerator[Chunk, None]:
        return self._stream("/completions", self._body(params, prompt=prompt), len(prompt))

    def _parse_event(self, data: bytes) -> tuple[str, FinishReason | None, tuple[int, int] | None]:
        event = self._event_json(data)
        usage = event.get("usage")
        counts = None
        if isinstance(usage, dict) and "prompt_tokens" in usage:
            counts = (int(usage.get("prompt_tokens") or 0),
                      int(usage.get("completion_tokens") or 0))
        choices = event.get("choices") or []
        if not choices:
            return "", None, counts
        choice = choices[0]
        if not isinstance(choice, dict):
            raise UpstreamProtocolError(f"{self.provider} sent a malformed choice.")
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        reason = choice.get("finish_reason")
        finish = _FINISH.get(reason, "stop") if reason else None
        return (text if isinstance(text, str) else ""), finish, counts

    def _tool_deltas(self, data: bytes) -> list[dict[str, Any]]:
        choices = orjson.loads(data).get("choices") or []  # parsed before: valid JSON
        delta = choices[0].get("delta") if choices and isinstance(choices[0], dict) else None
        calls = delta.get("tool_calls") if isinstance(delta, dict) else None
        return [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []
