"""The node's OpenAI-compatible API over the models it serves (:mod:`.models`).

Each request goes to the engine of the model it names: an unknown name is a 404, a known
model that is not loaded is loaded first (the request waits, up to ``load_wait``), and the
request holds its model until it ends, so an unload waits for it. ``/v1/models/load``,
``/unload`` and ``/ps`` are the node's model management (:mod:`.model_admin`).

Everything engine-independent lives here: validation, model-name checks, chat templating,
stop strings, SSE framing, usage, and metrics; ``n`` choices and OpenAI bodies in
:mod:`.turn`, function tools in :mod:`.tools`. A parameter the engine cannot honour
(``ModelInfo.features``) or that Inferno does not implement is a 400
``unsupported_parameter`` naming it. A streaming request pulls the engine's
first chunk before answering, so that errors found at admission (context too long) are
real HTTP errors rather than in-band events; after that the stream is relayed as
generated. Closing the engine's iterator is how stop strings and disconnects end work.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from urllib.parse import unquote

import orjson

from inferno.api import openai as oa
from inferno.backend import tools as tl
from inferno.backend.embeddings import embeddings_body
from inferno.backend.engines.base import (
    AnyEngine,
    Capability,
    ChatEngine,
    Chunk,
    EmbeddingEngine,
    Engine,
    Feature,
    SamplingParams,
)
from inferno.backend.metrics import BackendMetrics
from inferno.backend.model_admin import ADMIN_ROUTES, ModelAdmin
from inferno.backend.models import LoadedModels, ModelEntry
from inferno.backend.turn import Choice, Turn
from inferno.core.errors import (
    InfernoError,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
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
        if path.startswith("/v1/models/") and path not in ADMIN_ROUTES and req.method == "GET":
            # Model ids may contain "/" (org/name): clients send it as %2F.
            return self._model(unquote(path.removeprefix("/v1/models/")))
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

    def _model(self, model_id: str) -> Response:
        for card in orjson.loads(self._models().body)["data"]:
            if card["id"] == model_id or model_id in card.get("aliases", ()):
                return Response.json(card)
        raise ModelNotFound(f"The model '{model_id}' does not exist.", param="model")

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
        unsupported = creq.unsupported()
        if unsupported is not None:
            raise UnsupportedParameter(f"'{unsupported}' is not supported.", param=unsupported)
        engine: Engine = await self._acquire(  # type: ignore[assignment]
            creq.model, endpoint, held)  # capability checked there
        params = _params(creq, engine.info.features)
        mode: str | None = None
        make_tools: Callable[[], tl.ToolOutput | None] = lambda: None  # noqa: E731
        if isinstance(creq, oa.ChatCompletionRequest):
            params, mode, make_tools = tl.prepare(creq, engine.info, params,
                                                  provider=isinstance(engine, ChatEngine))
        start = _starter(engine, creq, mode)
        # Distinct seeds, else n seeded choices would all be the same text. All choices
        # start at once, so a batching engine admits them into the same steps.
        gens = [start(dataclasses.replace(
            params, seed=None if params.seed is None else params.seed + i))
            for i in range(creq.n)]
        firsts = await _firsts(gens)
        choices = [Choice(g, f, creq.stop_list(), make_tools())
                   for g, f in zip(gens, firsts, strict=True)]
        ttft = time.perf_counter() - started
        self._metrics.first_token(endpoint, creq.model, ttft)
        turn = Turn(endpoint, creq, choices)
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

    async def _stream(self, turn: Turn, started: float,
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


_FEATURES: tuple[tuple[Feature, str], ...] = (
    ("response_format", "response_format"), ("logit_bias", "logit_bias"),
    ("logprobs", "logprobs"))


def _params(creq: oa.ChatCompletionRequest | oa.CompletionRequest,
            features: frozenset[Feature]) -> SamplingParams:
    """The engine's parameters; a feature the engine lacks is a 400 naming its param."""
    fmt = creq.format_dict() if isinstance(creq, oa.ChatCompletionRequest) else None
    logprobs = creq.logprobs is not None and creq.logprobs is not False
    asked = {"response_format": fmt is not None, "logit_bias": bool(creq.logit_bias),
             "logprobs": logprobs}
    for feature, param in _FEATURES:
        if asked[feature] and feature not in features:
            raise UnsupportedParameter(f"The model '{creq.model}' does not support "
                                       f"'{param}'.", param=param)
    top = (creq.top_logprobs or 0) if isinstance(creq, oa.ChatCompletionRequest) \
        else (creq.logprobs or 0)
    if isinstance(creq, oa.ChatCompletionRequest) and creq.tool_choice is not None \
            and not creq.tools:
        raise InvalidRequest("'tool_choice' is only allowed when 'tools' are given.",
                             param="tool_choice")
    if isinstance(creq, oa.ChatCompletionRequest) and creq.top_logprobs and not logprobs:
        raise InvalidRequest("'top_logprobs' needs 'logprobs' set to true.",
                             param="top_logprobs")
    return SamplingParams(
        max_tokens=creq.token_limit(), temperature=creq.temperature, top_p=creq.top_p,
        seed=creq.seed, presence_penalty=creq.presence_penalty,
        frequency_penalty=creq.frequency_penalty, response_format=fmt,
        logit_bias=creq.bias_list(), logprobs=top if logprobs else None)


async def _first(gen: AsyncGenerator[Chunk, None]) -> Chunk:
    try:
        return await anext(gen)
    except StopAsyncIteration:
        return Chunk("", 0, 0, "stop")


async def _firsts(gens: list[AsyncGenerator[Chunk, None]]) -> list[Chunk]:
    """Every generation's first chunk, pulled concurrently; on any error all are closed."""
    tasks = [asyncio.ensure_future(_first(g)) for g in gens] if len(gens) > 1 else []
    try:
        if not tasks:
            return [await _first(gens[0])]
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for gen in gens:
            await gen.aclose()
        raise


def _starter(engine: Engine, creq: oa.ChatCompletionRequest | oa.CompletionRequest,
             mode: str | None) -> Callable[[SamplingParams], AsyncGenerator[Chunk, None]]:
    """What starts one generation of this request (one per choice)."""
    if isinstance(creq, oa.CompletionRequest):
        prompt = creq.prompt_text()
        if not prompt:
            raise InvalidRequest("The prompt is empty.", param="prompt")
        return lambda p: engine.generate(prompt, p)
    if isinstance(engine, ChatEngine):  # remote providers take messages as they are
        messages = tl.openai_messages(creq)
        chat_engine: ChatEngine = engine
        return lambda p: chat_engine.generate_chat(messages, p)
    if not engine.info.has_chat_template:
        raise InvalidRequest(f"The model '{creq.model}' has no chat template; "
                             "use /v1/completions.", param="model")
    native = engine.info.template_tools
    turns = tl.messages_for(creq, mode, native)
    rendered = engine.render_chat(turns, tools=tl.tool_dicts(creq) if native and mode
                                  else None)
    return lambda p: engine.generate(rendered, p)
