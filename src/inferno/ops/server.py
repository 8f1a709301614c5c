"""The operations server every component runs beside its main port (default 6100).

``GET /health``     200 ``healthy`` when ready; 503 with the state (``loading``, ``draining``)
``GET /metrics``    Prometheus text format from the component's own registry
``GET /telemetry``  JSON vitals (:class:`inferno.api.node.Vitals`)
Components add routes (the proxy: ``POST /registration``) through ``routes``; a key
ending in ``/*`` matches every path under it.

With ``own_thread=True`` the server runs its own event loop in a thread, so ``/health``
answers at once even while the component's main loop is saturated (a load balancer must
not mistake busy for dead). Only ``/health`` is answered there, from a plain state read;
every other route is handed to the main loop, so component state is never touched from
two threads.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from inferno.core.errors import MethodNotAllowed, NotFound
from inferno.net import HttpServer, Request, Response, StreamingResponse

Handler = Callable[[Request], Awaitable[Response | StreamingResponse]]
Route = tuple[str, str]  # (method, path)


class OpsServer:
    def __init__(self, *, health: Callable[[], str], telemetry: Callable[[], dict[str, Any]],
                 registry: CollectorRegistry,
                 routes: Mapping[Route, Handler] | None = None,
                 own_thread: bool = False) -> None:
        """``health`` returns the component's state: ``"ready"`` means healthy."""
        self._own_thread = own_thread
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.AbstractEventLoop | None = None
        self._health = health
        self._telemetry = telemetry
        self._registry = registry
        self._routes: dict[Route, Handler] = {
            ("GET", "/health"): self._get_health,
            ("GET", "/metrics"): self._get_metrics,
            ("GET", "/telemetry"): self._get_telemetry,
            **(routes or {}),
        }
        self._prefixes = [(m, p[:-1]) for (m, p) in self._routes if p.endswith("/*")]
        self._server = HttpServer(self._dispatch, max_body_size=256 * 1024)

    async def start(self, host: str, port: int) -> int:
        if not self._own_thread:
            return await self._server.start(host, port)
        self._main = asyncio.get_running_loop()
        loop = _new_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="ops-server",
                                        daemon=True)
        self._thread.start()
        # A thread waiting for the GIL gets it after this interval (default 5 ms).
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
        started = asyncio.run_coroutine_threadsafe(self._server.start(host, port), loop)
        return await asyncio.wrap_future(started)

    async def stop(self, grace: float = 2.0) -> None:
        if self._loop is None:
            await self._server.stop(grace)
            return
        loop, self._loop = self._loop, None
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._server.stop(grace),
                                                                   loop))
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)
        loop.close()

    @property
    def port(self) -> int:
        return self._server.port

    async def _dispatch(self, req: Request) -> Response | StreamingResponse:
        handler = self._routes.get((req.method, req.path))
        if handler is None:
            for method, prefix in self._prefixes:
                if req.method == method and req.path.startswith(prefix):
                    handler = self._routes[(method, prefix + "*")]
                    break
        if handler is None:
            if any(p == req.path for (_, p) in self._routes):
                raise MethodNotAllowed(f"{req.method} is not allowed on {req.path}.")
            raise NotFound(f"No route {req.method} {req.path}.")
        if self._main is None or handler == self._get_health:
            return await handler(req)
        # Everything but /health runs where the component's state lives. (Ops routes
        # answer whole bodies: a stream could not cross from one loop to the other.)
        async def on_main() -> Response | StreamingResponse:
            return await handler(req)

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(on_main(), self._main))

    async def _get_health(self, req: Request) -> Response:
        state = self._health()
        if state == "ready":
            return Response(200, b"healthy\n", content_type="text/plain; charset=utf-8")
        return Response(503, f"{state}\n".encode(), content_type="text/plain; charset=utf-8",
                        headers=[("retry-after", "1")])

    async def _get_metrics(self, req: Request) -> Response:
        return Response(200, generate_latest(self._registry), content_type=CONTENT_TYPE_LATEST)

    async def _get_telemetry(self, req: Request) -> Response:
        return Response(200, orjson.dumps(self._telemetry()))


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio works too
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
