"""The operations server every component runs beside its main port (default 6100).

``GET /health``     200 ``healthy`` when ready; 503 with the state (``loading``, ``draining``)
``GET /metrics``    Prometheus text format from the component's own registry
``GET /telemetry``  JSON vitals (:class:`inferno.api.node.Vitals`)
Components add routes (the proxy: ``POST /registration``) through ``routes``; a key
ending in ``/*`` matches every path under it.
"""

from __future__ import annotations

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
                 routes: Mapping[Route, Handler] | None = None) -> None:
        """``health`` returns the component's state: ``"ready"`` means healthy."""
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
        return await self._server.start(host, port)

    async def stop(self, grace: float = 2.0) -> None:
        await self._server.stop(grace)

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
        return await handler(req)

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
