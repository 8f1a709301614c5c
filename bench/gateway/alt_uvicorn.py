"""``UvicornServer``: a :data:`Handler` served by uvicorn inside the caller's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

import uvicorn
from alt_asgi import AsgiApp

from inferno.core.errors import InfernoError
from inferno.net import Handler, Request

log = logging.getLogger("inferno.net")


class UvicornServer:
    def __init__(
        self,
        handler: Handler,
        *,
        max_body_size: int = 4 * 1024 * 1024,
        max_header_size: int = 64 * 1024,
        keepalive_timeout: float = 75.0,
        header_timeout: float = 30.0,
        body_timeout: float = 30.0,
        send_timeout: float = 30.0,
        max_connections: int = 4096,
        server_header: str = "inferno",
        before_body: Callable[[Request], None] | None = None,
        on_reject: Callable[[InfernoError], None] | None = None,
    ) -> None:
        self.app = AsgiApp(handler, max_body_size=max_body_size, body_timeout=body_timeout,
                           send_timeout=send_timeout, before_body=before_body,
                           on_reject=on_reject)
        self._config = uvicorn.Config(
            self.app, http="httptools", loop="none", lifespan="off", ws="none",
            interface="asgi3", log_config=None, access_log=False, server_header=False,
            headers=[("server", server_header)], timeout_keep_alive=int(keepalive_timeout),
            limit_concurrency=max_connections, backlog=2048)
        self._server: uvicorn.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._port = 0

    @property
    def port(self) -> int:
        return self._port

    @property
    def active_requests(self) -> int:
        return self.app.active_requests

    async def start(self, host: str, port: int, *, sock: socket.socket | None = None) -> int:
        if self._server is not None:
            raise RuntimeError("server already started")
        if sock is None:
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        sock.set_inheritable(True)
        self._port = int(sock.getsockname()[1])
        server = uvicorn.Server(self._config)
        self._config.load()
        server.lifespan = self._config.lifespan_class(self._config)
        await server.startup(sockets=[sock])
        self._server = server
        await server.on_tick(0)  # the date header, refreshed each second by the ticker
        self._ticker = asyncio.create_task(self._tick(server))
        self.app.start_sweeper()
        return self._port

    async def _tick(self, server: uvicorn.Server) -> None:
        while True:
            await asyncio.sleep(1.0)
            await server.on_tick(0)

    async def stop(self, grace: float = 10.0) -> None:
        server = self._server
        if server is None:
            return
        self._server = None
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        self._config.timeout_graceful_shutdown = max(1, round(grace))
        server.should_exit = True
        await server.shutdown()
        self.app.stop_sweeper()
