"""The proxy's OpenAI-compatible API: read just what routing needs, then forward.

The body is parsed once with orjson to find ``model``, ``stream`` and ``user``; it is
forwarded as received. Deeper validation happens on the node, whose 4xx is relayed
unchanged (and never retried).

``/v1/messages`` (Anthropic) and ``/v1/responses`` (OpenAI Responses) are served by
translation (:mod:`inferno.proxy.anthropic`, :mod:`inferno.proxy.responses`): their
handlers build a chat-completions body and hand it to :meth:`ProxyAPI.chat`, which runs
the same guard, routing and forwarding, logged under their own route. The chat path pays
one ``is None`` check for them.
Other components serve routes through :meth:`ProxyAPI.mount` (a :class:`Mount`: the Batch
and Files API), and run requests through the same pipeline with :meth:`ProxyAPI.dispatch`:
as a given principal, at background priority (see ``admission.py``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote

import orjson

from inferno.api import openai as oa
from inferno.core.errors import (
    InfernoError,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    NoBackendAvailable,
    NotFound,
    NotReady,
)
from inferno.core.validation import json_object
from inferno.net import BodySink, Request, Response, StreamingResponse
from inferno.proxy.admission import Admission
from inferno.proxy.anthropic import COUNT, MESSAGES, AnthropicAPI, shape
from inferno.proxy.forward import Forwarder
from inferno.proxy.metrics import ProxyMetrics
from inferno.proxy.pool import Pool
from inferno.proxy.responses import RESPONSES, ResponsesAPI
from inferno.proxy.responses_store import ResponseStore
from inferno.proxy.router import Router

if TYPE_CHECKING:
    from inferno.proxy.models_admin import ModelsAdmin
    from inferno.proxy.security.admin import AdminAPI
    from inferno.proxy.security.guard import RequestGuard
    from inferno.proxy.standby import Standby
    from inferno.proxy.tracing import ProxyTracing



_INFERENCE = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
# Other APIs, served by translating to chat completions (proxy.anthropic, proxy.responses).
_TRANSLATED = (MESSAGES, RESPONSES)
_ROUTES = _INFERENCE | {MESSAGES, COUNT, RESPONSES}
_CHAT = "/v1/chat/completions"
Api = Callable[[Request, str], Awaitable[Response | StreamingResponse]]

# Set while a request runs for background work (ProxyAPI.dispatch): admitted at low priority.
_BACKGROUND: ContextVar[bool] = ContextVar("inferno_background", default=False)


class Mount(Protocol):
    """Routes another component serves on the API port. The proxy authenticates on the
    headers first (``check_head``); ``body_sink`` may then take the body as it streams in
    (an upload), instead of the proxy reading it into memory."""

    def owns(self, path: str) -> bool: ...

    def body_sink(self, req: Request) -> BodySink | None: ...

    async def handle(self, req: Request) -> Response | StreamingResponse: ...


class ProxyAPI:
    def __init__(self, pool: Pool, router: Router, forwarder: Forwarder, admission: Admission,
                 metrics: ProxyMetrics, *, request_timeout: float,
                 guard: RequestGuard | None = None, admin: AdminAPI | None = None,
                 models_admin: ModelsAdmin | None = None,
                 stored: ResponseStore | None = None) -> None:
        # guard: auth, limits, cache and the request log around each inference request
        # (inferno.proxy.security); None serves every request unauthenticated, unrecorded.
        self._guard = guard
        self._admin = admin
        self._models_admin = models_admin
        self._pool = pool
        self._router = router
        self._forwarder = forwarder
        self._admission = admission
        self._metrics = metrics
        self._request_timeout = request_timeout
        self.accepting = True
        self._mounts: list[Mount] = []
        self.tracing: ProxyTracing | None = None  # OTEL_* variables turn it on
        self.standby: Standby | None = None  # holds requests for models scaled to zero
        self.in_flight = 0
        self.requests_total = 0
        self._count = {p: metrics.requests.labels(p, "200") for p in _ROUTES}
        # Per-request metric work kept to one locked add each: children resolved once, and
        # the in-flight gauge reads the counter above when scraped instead of inc/dec.
        self._latency = {p: metrics.latency.labels(p) for p in _ROUTES}
        self._anthropic = AnthropicAPI(self.chat)
        # Stored Responses API responses (in memory when no store is given).
        self._responses = ResponsesAPI(self.chat, self.owner, stored or ResponseStore(None))
        metrics.in_flight.set_function(lambda: float(self.in_flight))

    def check_head(self, req: Request) -> None:
        """Authenticate on the headers alone, before the server reads any body byte: an
        unauthenticated client cannot make the proxy hold its upload."""
        if self._guard is not None and req.path.startswith("/v1/"):
            try:
                req.auth = self._guard.auth.authenticate(req)
            except InfernoError as exc:
                if req.path.startswith(MESSAGES):
                    shape(exc)  # Anthropic clients read Anthropic's error shape
                raise
        for mount in self._mounts:
            if mount.owns(req.path):
                req.sink = mount.body_sink(req)
                return

    def mount(self, mount: Mount) -> None:
        self._mounts.append(mount)

    def set_router(self, router: Router) -> None:
        """Routing changed at run time (``PUT /routing``): one attribute write, atomic."""
        self._router = router

    async def dispatch(self, principal: object, path: str, body: bytes) -> Response:
        """Run one inference request through the whole pipeline (auth already decided:
        ``principal``; limits, routing, accounting) at background priority."""
        req = Request("POST", path, "", [(b"content-type", b"application/json")], body,
                      None, True, False)
        req.auth = principal
        token = _BACKGROUND.set(True)
        try:
            resp = await self._inference(req, path)
        finally:
            _BACKGROUND.reset(token)
        if isinstance(resp, StreamingResponse):  # never asked for, but read it whole
            chunks = [c async for c in resp.chunks]
            resp = Response(resp.status, b"".join(chunks), headers=resp.headers,
                            content_type=resp.content_type)
        return resp

    async def handle(self, req: Request) -> Response | StreamingResponse:
        path = req.path
        if path in _INFERENCE:
            if req.method != "POST":
                raise MethodNotAllowed(f"{req.method} is not allowed on {path}; use POST.")
            if req.header("x-inferno-priority") == "background":  # batch workers' requests
                token = _BACKGROUND.set(True)
                try:
                    return await self._inference(req, path)
                finally:
                    _BACKGROUND.reset(token)
            return await self._inference(req, path)
        if path.startswith(_TRANSLATED):
            return await self._translated(req, path)
        if self._guard is not None and path.startswith("/v1/models"):
            self._guard.auth.authenticate(req)
        if path.rstrip("/") == "/v1/models":
            if req.method != "GET":
                raise MethodNotAllowed(f"{req.method} is not allowed on /v1/models; use GET.")
            return self._models()
        if self._models_admin is not None and self._models_admin.owns(path):
            return await self._models_admin.handle(req)
        if path.startswith("/v1/models/") and req.method == "GET":
            # Model ids may contain "/" (org/name): clients send it as %2F.
            return self._model(unquote(path.removeprefix("/v1/models/")))
        if self._admin is not None and self._admin.owns(path):
            return await self._admin.handle(req)
        for mount in self._mounts:
            if mount.owns(path):
                return await mount.handle(req)
        raise NotFound(f"Unknown route {req.method} {path}.")

    async def _translated(self, req: Request, path: str) -> Response | StreamingResponse:
        anthropic = path.startswith(MESSAGES)
        try:
            if anthropic:
                if req.method == "POST" and path in (MESSAGES, COUNT):
                    return await self._inference(req, path, self._anthropic.handle)
                return await self._anthropic.handle(req, path)
            if req.method == "POST" and path == RESPONSES:
                return await self._inference(req, path, self._responses.handle)
            return await self._responses.handle(req, path)
        except InfernoError as exc:
            if anthropic:
                shape(exc)
            raise

    def owner(self, req: Request) -> str | None:
        """The API key a request runs as (None: auth off, one anonymous owner)."""
        return None if self._guard is None else self._guard.auth.authenticate(req).key_id

    async def chat(self, req: Request, route: str, data: dict[str, Any]
                   ) -> Response | StreamingResponse:
        """Serve a chat-completions body built by a translating API through the same
        pipeline as /v1/chat/completions (auth, limits, cache, routing), logged as ``route``."""
        req.body = body = orjson.dumps(data)
        if self._guard is not None:
            return await self._guard.handle(req, route, self._forward_chat)
        model, stream, user = _routing_fields(data)
        return await self._route_and_forward(req, _CHAT, data, model, stream, user, body)

    async def _forward_chat(self, req: Request, path: str, data: dict[str, Any], model: str,
                            stream: bool, user: str | None, body: bytes
                            ) -> Response | StreamingResponse:
        return await self._route_and_forward(req, _CHAT, data, model, stream, user, body)

    async def _inference(self, req: Request, path: str, api: Api | None = None
                         ) -> Response | StreamingResponse:
        started = time.perf_counter()
        self.in_flight += 1
        self.requests_total += 1
        background = _BACKGROUND.get()
        admission = self._admission
        if background:
            admission.background_in_flight += 1
        else:
            admission.note_interactive(self.in_flight - admission.background_in_flight)
        status = 500
        streaming = False
        try:
            if not self.accepting:
                raise NotReady("The proxy is shutting down; retry on another replica.")
            if api is not None:
                resp = await api(req, path)
            elif self._guard is not None:
                resp = await self._guard.handle(req, path, self._route_and_forward)
            else:
                data = _parse(req.body)
                model, stream, user = _routing_fields(data)
                resp = await self._route_and_forward(req, path, data, model, stream, user)
            status = resp.status
            if isinstance(resp, StreamingResponse):
                # Still in flight until the stream ends: the chunks take the decrement.
                timed = not background and admission.wants_sample()
                resp.chunks = _InFlightChunks(resp.chunks, self, background,
                                              started if timed else None)
                streaming = True
            elif not background and status == 200:
                admission.observe_interactive(time.perf_counter() - started)
            return resp
        except InfernoError as exc:
            status = exc.status_code
            raise
        finally:
            if not streaming:
                self.in_flight -= 1
                if background:
                    admission.background_in_flight -= 1
            counter = self._count.get(path) if status == 200 else None
            (counter or self._metrics.requests.labels(path, str(status))).inc()
            self._latency[path].observe(time.perf_counter() - started)

    async def _route_and_forward(self, req: Request, path: str, data: dict[str, Any],
                                 model: str, stream: bool, user: str | None,
                                 body: bytes | None = None) -> Response | StreamingResponse:
        deadline = time.monotonic() + self._request_timeout
        background = _BACKGROUND.get()
        body = req.body if body is None else body
        router = self._router  # read once: a routing swapped meanwhile is for the next ones
        target = router.target_model(model)
        if target != model:  # canary: only these requests pay for re-serialising
            body = orjson.dumps({**data, "model": target})
        profile = router.profile_for(target, req.header("x-inferno-profile"))
        session = req.header("x-session-id")
        queued_at = 0.0
        queued_since: float | None = None  # monotonic, for the queue's bound
        while True:
            snapshot = self._pool.snapshot
            nodes = snapshot.by_model.get(target)
            if not nodes:
                standby = self.standby
                if standby is not None and standby.holds(target, snapshot):
                    await standby.hold(target)  # until a node is ready; raises past bounds
                    # The request's time runs from when a node could take it.
                    deadline = time.monotonic() + self._request_timeout
                    continue
                raise _no_route(target, snapshot.models, bool(snapshot.nodes))
            decision = router.route(profile, nodes, model=target, stream=stream,
                                          user=user, session=session, body=data)
            if not decision.order:
                raise NoBackendAvailable(f"No healthy node serves '{target}' right now.",
                                         retry_after=1)
            if background:
                order = self._admission.background_room(decision.order, decision.candidates)
                if order:
                    break
                await self._admission.wait_background(deadline)
                continue
            if self._admission.has_room(decision.order):
                order = [n for n in decision.order if n.outstanding < self._admission.cap(n)]
                break
            queued_at = queued_at or time.perf_counter()
            queued_since = queued_since or time.monotonic()
            await self._admission.wait(deadline, queued_since)  # raises Overloaded if refused
        self._metrics.queue_time.observe(queued_at and time.perf_counter() - queued_at)
        order = [n for n in decision.order if n.outstanding < self._admission.cap(n)]
        headers = req.headers
        if self.tracing is not None:
            parent = self.tracing.start(req, path, target, stream)
            headers = [*(h for h in headers if h[0] != b"traceparent"), (b"traceparent", parent)]
        return await self._forwarder.forward(path, headers, body, order, stream,
                                             deadline=deadline, route=decision.explain)

    def _listed(self) -> frozenset[str]:
        """Models served now, and standby ones (a request for them waits for a node)."""
        models = self._pool.snapshot.models
        return models if self.standby is None else models | self.standby.models()

    def _models(self) -> Response:
        created = int(time.time())
        cards = [oa.model_card(m, created=created) for m in sorted(self._listed())]
        return Response.json(oa.model_list(cards))

    def _model(self, model_id: str) -> Response:
        if model_id not in self._listed():
            raise ModelNotFound(f"The model '{model_id}' does not exist.", param="model")
        return Response.json(oa.model_card(model_id))


class _InFlightChunks:
    """A streamed response's chunks: its request stays in flight until they are closed.

    The server ``aclose()``s a stream's iterator whenever the stream ends: finished, cut,
    the client gone, or never started. That is where the request stops being in flight
    (once). Iteration goes straight to the wrapped iterator: nothing added per chunk.
    """

    __slots__ = ("_api", "_background", "_chunks", "_started")

    def __init__(self, chunks: AsyncIterator[bytes], api: ProxyAPI, background: bool,
                 started: float | None) -> None:
        self._chunks = chunks
        self._api: ProxyAPI | None = api
        self._background = background
        self._started = started  # an interactive stream: its first chunk is timed

    def __aiter__(self) -> AsyncIterator[bytes]:
        # Only a timed stream is iterated through here; others go straight to the chunks.
        return self if self._started is not None else self._chunks.__aiter__()

    def __anext__(self) -> Awaitable[bytes]:
        if self._started is not None:
            return self._first()
        return self._chunks.__anext__()

    async def _first(self) -> bytes:
        chunk = await self._chunks.__anext__()
        started, self._started = self._started, None
        api = self._api
        if started is not None and api is not None:
            admission = api._admission
            admission.observe_interactive(time.perf_counter() - started)
        return chunk

    async def aclose(self) -> None:
        api, self._api = self._api, None
        if api is not None:
            api.in_flight -= 1
            if self._background:
                api._admission.background_in_flight -= 1
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()


_parse = json_object  # the body parsed once, only for what routing needs


def _routing_fields(data: dict[str, Any]) -> tuple[str, bool, str | None]:
    model = data.get("model")
    if model is None:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("Invalid value for 'model': expected a non-empty string.",
                             param="model")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("Invalid value for 'stream': expected a boolean.", param="stream")
    user = data.get("user")
    return model, stream, user if isinstance(user, str) else None


def _no_route(model: str, known: frozenset[str], any_nodes: bool) -> InfernoError:
    if model in known:
        return NoBackendAvailable(f"No healthy node serves '{model}' right now.", retry_after=1)
    if not any_nodes:
        return NoBackendAvailable("No inference nodes are registered yet.", retry_after=1)
    return ModelNotFound(f"The model '{model}' does not exist.", param="model")
