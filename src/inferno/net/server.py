"""A minimal HTTP/1.1 server on ``asyncio.Protocol`` + ``httptools``.

Contract:
- one handler task per request; requests on one connection are answered in order;
- a handler's ``InfernoError`` becomes its status, ``headers()`` and OpenAI JSON body;
  any other exception is logged (with traceback) and answered with a generic 500 body;
- ``Response`` carries ``content-length``; ``StreamingResponse`` is sent chunked and
  every chunk is flushed as it is produced (text/event-stream also gets
  ``cache-control: no-cache`` and ``x-accel-buffering: no``);
- limits: body over ``max_body_size`` -> 413, headers + URL over ``max_header_size`` ->
  431, unparsable (or HTTP/1.1 without exactly one Host) -> 400, each followed by closing
  the connection; headers not complete within ``header_timeout`` or a keep-alive
  connection idle for ``keepalive_timeout`` -> closed; a body not complete within
  ``body_timeout`` of its headers -> 408 (one deadline: bytes trickling in do not extend
  it). All checked by one periodic sweep, not a timer per request;
- at most ``max_connections`` open connections (past it a new one gets 503 and is
  closed) and ``max_requests_per_connection`` requests on one (the last is answered with
  ``connection: close``);
- ``before_body(request)`` runs as soon as the headers are parsed, before any body byte is
  read (the request's ``body`` is still empty): an ``InfernoError`` it raises is the
  answer, and the connection closes without reading the body. Authentication goes here,
  so an unauthenticated client cannot make the server hold its upload. It may also set
  ``request.sink`` (a :class:`BodySink`): that body then streams into the sink, up to the
  sink's own ``limit`` (at most ``max_stream_size``), instead of into memory;
- chunked trailers are parsed and dropped: they never join the request's headers;
- a HEAD request is answered with the headers its GET would get and no body;
- a client disconnect sets ``request.disconnected`` and cancels the handler task, which
  also stops and ``aclose()``s a streaming iterator; a client that stops reading a
  stream for ``send_timeout`` seconds is disconnected the same way;
- ``stop(grace)`` stops accepting, closes idle connections, lets in-flight requests run
  up to ``grace`` seconds, then cancels them and closes everything.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from ..core.errors import InfernoError
from ._http import HeadEncoder
from ._messages import BodySink, Handler, Request, Response, StreamingResponse
from ._server_conn import ServerConnection

__all__ = ["BodySink", "Handler", "HttpServer", "Request", "Response", "StreamingResponse"]


class HttpServer:
    def __init__(
        self,
        handler: Handler,
        *,
        max_body_size: int = 4 * 1024 * 1024,
        max_stream_size: int = 0,
        max_header_size: int = 64 * 1024,
        keepalive_timeout: float = 75.0,
        header_timeout: float = 30.0,
        body_timeout: float = 60.0,
        send_timeout: float = 60.0,
        max_connections: int = 10_000,
        max_requests_per_connection: int = 100_000,
        server_header: str = "inferno",
        before_body: Callable[[Request], None] | None = None,
        on_reject: Callable[[InfernoError], None] | None = None,
    ) -> None:
        # on_reject: told of every request the wire layer refuses itself (413, 431,
        # malformed), which never reaches the handler; e.g. so it can still be logged.
        self.on_reject = on_reject
        self._handler = handler
        self._max_body_size = max_body_size
        # The largest body a before_body hook may stream into a sink (0: none may).
        self._max_stream_size = max_stream_size
        self._max_header_size = max_header_size
        self._keepalive_timeout = keepalive_timeout
        self._header_timeout = header_timeout
        self._body_timeout = body_timeout
        self._send_timeout = send_timeout
        self._max_connections = max_connections
        self._max_requests = max_requests_per_connection
        self._before_body = before_body
        self._heads = HeadEncoder(server_header)
        self._conns: set[ServerConnection] = set()
        self._active = 0
        self._stopping = False
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_interval = max(
            0.05, min(1.0, header_timeout / 4, keepalive_timeout / 4, body_timeout / 4))
        self._port = 0
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set in start()

    @property
    def active_requests(self) -> int:
        return self._active

    @property
    def port(self) -> int:
        return self._port

    async def start(self, host: str, port: int, *, sock: socket.socket | None = None) -> int:
        """Listen on ``host:port`` (or on ``sock``); returns the bound port."""
        if self._server is not None:
            raise RuntimeError("server already started")
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        if sock is not None:
            server = await self._loop.create_server(
                lambda: ServerConnection(self), sock=sock, backlog=2048
            )
        else:
            server = await self._loop.create_server(
                lambda: ServerConnection(self), host, port, reuse_address=True, backlog=2048
            )
        self._server = server
        sockets = server.sockets
        self._port = int(sockets[0].getsockname()[1]) if sockets else port
        self._sweeper = self._loop.call_later(self._sweep_interval, self._sweep)
        return self._port

    def _sweep(self) -> None:
        now = self._loop.time()
        for conn in list(self._conns):
            if not conn.busy and now > conn.deadline:
                conn.expire()
        self._sweeper = self._loop.call_later(self._sweep_interval, self._sweep)

    async def stop(self, grace: float = 10.0) -> None:
        server = self._server
        if server is None:
            return
        self._stopping = True
        server.close()
        for conn in list(self._conns):
            if not conn.busy:
                conn.close()
        tasks = {t for c in self._conns if (t := c.task) is not None}
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        leftover = {t for c in self._conns if (t := c.task) is not None}
        for conn in list(self._conns):
            conn.abort()
        if leftover:
            # Give cancelled handlers a moment to run their cleanup (e.g. closing upstreams).
            await asyncio.wait(leftover, timeout=1.0)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        await server.wait_closed()
        self._server = None
