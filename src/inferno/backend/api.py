"""The node's OpenAI-compatible API over the models it serves (:mod:`.models`).

Each request goes to the engine of the model it names: an unknown name is a 404, a known
model that is not loaded is loaded first (the request waits, up to ``load_wait``), and the
request holds its model until it ends, so an unload waits for it. ``/v1/models/load``,
``/unload`` and ``/ps`` are the node's model management (:mod:`.model_admin`).

Everything engine-independent lives here: validation, model-name checks, chat templating,
stop strings, SSE framing, usage, and metrics. A streaming request pulls the engine's
first chunk before answering, so that errors found at admission (context too long) are
real HTTP errors rather than in-band events; after that the stream is relayed as
generated. Closing the engine's iterator is how stop strings and disconnects end work.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import orjson

from inferno.api import openai as oa
from inferno.backend.embeddings import embeddings_body
from inferno.backend.engines.base import (
    AnyEngine,
    Capability,
    ChatEngine,
    Chunk,
    EmbeddingEngine,
    Engine,
    SamplingParams,
)
from inferno.backend.metrics import BackendMetrics
from inferno.backend.model_admin import ADMIN_ROUTES, ModelAdmin
from inferno.backend.models import LoadedModels, ModelEntry
from inferno.backend.stops import StopMatcher
from inferno.core.errors import (
    InfernoError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    NotReady,
    UnsupportedParameter,
)
from inferno.core.validation import parse_request
from inferno.net import Request, Response, StreamingResponse
from inferno.net.sse import SSE_DONE, sse_event

_ROUTES = {"/v1/chat/completions": "POST", "/v1/completions": "POST", "/v1/models": "GET",
           "/v1/embeddings": "POST", **ADMIN_ROUTES}
_ENDPOINTS: dict[str, tuple[str, Capability]] = {
    "/v1/chat/completions": ("chat", "chat"),
    "/v1/completions": ("completions", "completions"),
    "/v1/embeddings": ("embeddings", "embeddings"),
}


class BackendAPI:
    def __init__(self, models: LoadedModels, metrics: BackendMetrics,
                 state: Callable[[], str], *, admin: ModelAdmin | None = None,
                 load_wait: float = 300.0) -> None:
        self.models = models
        self._metrics = metrics
        self._state = state
        self._admin = admin or ModelAdmin(models, token=None)
        self._load_wait = load_wait
        self.in_flight = 0
        self.requests_total = 0

    async def handle(self, req: Request) -> Response | StreamingResponse:
        path = req.path.rstrip("/") or "/"
        method = _ROUTES.get(path)
        if method is None:
            raise NotFound(f"Unknown route {req.method} {req.path}.")
        if req.method != method:
            raise MethodNotAllowed(f"{req.method} is not allowed on {path}; use {method}.")
        if path == "/v1/models":
            return self._models()
        if path in ADMIN_ROUTES:
            return await self._admin.handle(req, path)
        endpoint = _ENDPOINTS[path][0]
        started = time.perf_counter()
        self.in_flight += 1
        self.requests_total += 1
        self._metrics.in_flight.inc()
        status = 500
        streaming = False
        held: list[ModelEntry] = []  # the model this request holds, released at its end
        try:
            if endpoint == "embeddings":
                resp: Response | StreamingResponse = await self._embeddings(req, held)
            else:
                resp = await self._completion(req, endpoint, started, held)
            status = resp.status
            if isinstance(resp, StreamingResponse):
                streaming = True  # the stream's own finally settles the books
            return resp
        except InfernoError as exc:
            status = exc.status_code
            raise
        finally:
            if not streaming:
                self._finish(endpoint, status, started, held)

    def _finish(self, endpoint: str, status: int, started: float,
                held: list[ModelEntry]) -> None:
        for entry in held:
            self.models.release(entry)
        held.clear()
        self.in_flight -= 1
        self._metrics.in_flight.dec()
        self._metrics.requests.labels(endpoint, str(status)).inc()
        self._metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

    def _models(self) -> Response:
        cards = []
        for entry in self.models.entries:
            info = entry.info
            card = oa.model_card(info.id, info.owned_by, context_length=info.context_length,
                                 aliases=list(entry.aliases),
                                 capabilities=sorted(info.capabilities))
            if info.dimensions is not None:
                card["dimensions"] = info.dimensions
            # Beyond OpenAI's fields: "loaded", or "unloaded" (loads on first request).
            card["status"] = "loaded" if entry.state == "loaded" else "unloaded"
            cards.append(card)
        return Response.json(oa.model_list(cards))

    async def _acquire(self, model: str, endpoint: str,
                       held: list[ModelEntry]) -> AnyEngine:
        """The loaded engine of ``model`` if it can serve the endpoint (else a clear 4xx),
        held by this request."""
        entry = self.models.find(model)
        self._check_model(entry, model, endpoint)
        entry = await self.models.acquire(model, wait=self._load_wait)
        held.append(entry)
        if entry.engine is None:  # loaded entries have one
            raise NotReady(f"The model '{model}' is not loaded; retry.")
        return entry.engine

    def _check_model(self, entry: ModelEntry, model: str, endpoint: str) -> None:
        """The model can do what the endpoint asks (else a clear 4xx)."""
        caps = entry.info.capabilities
        needed = _ENDPOINTS[f"/v1/{'chat/completions' if endpoint == 'chat' else endpoint}"][1]
        if needed not in caps:
            can = ", ".join(f"/v1/{'chat/completions' if c == 'chat' else c}"
                            for c in sorted(caps)) or "nothing"
            raise UnsupportedParameter(
                f"The model '{model}' does not support /v1/"
                f"{'chat/completions' if endpoint == 'chat' else endpoint}; it serves {can}.",
                param="model")

    async def _embeddings(self, req: Request, held: list[ModelEntry]) -> Response:
        if self._state() != "ready":
            raise NotReady(f"This node is {self._state()}; try another node.")
        ereq = parse_request(oa.EmbeddingRequest, req.body)
        engine: EmbeddingEngine = await self._acquire(  # type: ignore[assignment]
            ereq.model, "embeddings", held)  # capability checked there
        return Response(200, await embeddings_body(engine, ereq))

    async def _completion(self, req: Request, endpoint: str, started: float,
                          held: list[ModelEntry]) -> Response | StreamingResponse:
        if self._state() != "ready":
            raise NotReady(f"This node is {self._state()}; try another node.")
        if endpoint == "chat":
            creq: oa.ChatCompletionRequest | oa.CompletionRequest = parse_request(
                oa.ChatCompletionRequest, req.body)
        else:
            creq = parse_request(oa.CompletionRequest, req.body)
        engine: Engine = await self._acquire(  # type: ignore[assignment]
            creq.model, endpoint, held)  # capability checked there
        params = SamplingParams(
            max_tokens=creq.token_limit(), temperature=creq.temperature, top_p=creq.top_p,
            seed=creq.seed, presence_penalty=creq.presence_penalty,
            frequency_penalty=creq.frequency_penalty)
        if isinstance(creq, oa.ChatCompletionRequest):
            messages = [{"role": m.role, "content": m.text()} for m in creq.messages]
            if isinstance(engine, ChatEngine):  # remote providers take messages as they are
                gen = engine.generate_chat(messages, params)
            else:
                if not engine.info.has_chat_template:
                    raise InvalidRequest(f"The model '{creq.model}' has no chat template; "
                                         "use /v1/completions.", param="model")
                gen = engine.generate(engine.render_chat(messages), params)
        else:
            prompt = creq.prompt_text()
            if not prompt:
                raise InvalidRequest("The prompt is empty.", param="prompt")
            gen = engine.generate(prompt, params)
        try:
            first = await anext(gen)
        except StopAsyncIteration:
            first = Chunk("", 0, 0, "stop")
        except BaseException:
            await gen.aclose()
            raise
        ttft = time.perf_counter() - started
        self._metrics.first_token(endpoint, creq.model, ttft)
        turn = _Turn(endpoint, creq, gen, first)
        turn.ttft = ttft
        turn.traceparent = req.header("traceparent")
        if creq.stream:
            return StreamingResponse(self._stream(turn, started, held))
        try:
            body = await turn.collect()
        finally:
            self._metrics.turn_done(creq.model, time.perf_counter() - started, ttft,
                                    turn.completion_tokens, **turn.trace())
        return Response(200, orjson.dumps(body))

    async def _stream(self, turn: _Turn, started: float,
                      held: list[ModelEntry]) -> AsyncIterator[bytes]:
        status = 200
        try:
            async for event in turn.events():
                yield sse_event(orjson.dumps(event))
            yield SSE_DONE
        except InfernoError as exc:
            status = exc.status_code
            yield sse_event(exc.to_json())
        except BaseException:
            status = 499  # client went away (cancelled) or the stream broke
            raise
        finally:
            self._metrics.turn_done(turn.creq.model, time.perf_counter() - started, turn.ttft,
                                    turn.completion_tokens, **turn.trace(status))
            self._finish(turn.endpoint, status, started, held)


class _Turn:
    """One generation: the engine's chunks turned into OpenAI bodies, stop strings applied."""

    def __init__(self, endpoint: str, creq: oa.ChatCompletionRequest | oa.CompletionRequest,
                 gen: AsyncGenerator[Chunk, None], first: Chunk) -> None:
        self.endpoint = endpoint
        self.creq = creq
        self.gen = gen
        self.first = first
        self.ttft = 0.0  # seconds, for the metrics
        self.traceparent: str | None = None  # the caller's W3C trace context
        self.finish_reason: str | None = None
        self.id = ("chatcmpl-" if endpoint == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.prompt_tokens = first.prompt_tokens
        self.completion_tokens = 0
        self._stops = StopMatcher(creq.stop_list())

    def trace(self, status: int = 200) -> dict[str, Any]:
        """What a trace of this turn records beyond the metrics (see BackendMetrics)."""
        return {"endpoint": self.endpoint, "traceparent": self.traceparent, "status": status,
                "prompt_tokens": self.prompt_tokens, "finish_reason": self.finish_reason}

    async def pieces(self) -> AsyncIterator[tuple[str, str | None]]:
        """(text, finish_reason) pairs; finish is set on the last one only."""
        try:
            chunk: Chunk | None = self.first
            while chunk is not None:
                self.completion_tokens = chunk.completion_tokens
                # Remote providers may only know the prompt's size at the end.
                self.prompt_tokens = chunk.prompt_tokens or self.prompt_tokens
                text = self._stops.feed(chunk.text)
                if self._stops.stopped:
                    self.finish_reason = "stop"
                    yield text, "stop"
                    return
                if chunk.finish_reason is not None:
                    self.finish_reason = _finish(chunk.finish_reason)
                    yield text + self._stops.flush(), self.finish_reason
                    return
                if text:
                    yield text, None
                chunk = await anext(self.gen, None)
            self.finish_reason = "stop"
            yield self._stops.flush(), "stop"
        finally:
            await self.gen.aclose()

    async def collect(self) -> dict[str, Any]:
        parts: list[str] = []
        finish: str | None = None
        async for text, reason in self.pieces():
            parts.append(text)
            finish = reason
        text = "".join(parts)
        if self.endpoint == "chat":
            return oa.chat_completion(self.id, self.creq.model, self.created, text, finish,
                                      self.prompt_tokens, self.completion_tokens)
        if isinstance(self.creq, oa.CompletionRequest) and self.creq.echo:
            text = self.creq.prompt_text() + text
        return oa.text_completion(self.id, self.creq.model, self.created, text, finish,
                                  oa.usage_dict(self.prompt_tokens, self.completion_tokens))

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        model, rid, created = self.creq.model, self.id, self.created
        chat = self.endpoint == "chat"
        if chat:
            yield oa.chat_chunk(rid, model, created, {"role": "assistant", "content": ""}, None)
        async for text, finish in self.pieces():
            if chat:
                if text:
                    yield oa.chat_chunk(rid, model, created, {"content": text}, None)
                if finish:
                    yield oa.chat_chunk(rid, model, created, {}, finish)
            elif text or finish:
                yield oa.text_completion(rid, model, created, text, finish, None, chunk=True)
        if self.creq.include_usage:
            obj = "chat.completion.chunk" if chat else "text_completion"
            yield oa.usage_chunk(rid, model, created, obj, self.prompt_tokens,
                                 self.completion_tokens)


def _finish(reason: str) -> str:
    # "abort" means the engine shut down under us; the client sees a normal end of text.
    return "stop" if reason == "abort" else reason
