"""``GranianServer``: a :data:`Handler` served by granian (Rust, hyper) over RSGI, embedded
in the caller's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any

from alt_asgi import GENERIC_500

from inferno.core.errors import InfernoError, PayloadTooLarge
from inferno.net import Handler, Request, Response, StreamingResponse

log = logging.getLogger("inferno.net")


class RsgiApp:
    def __init__(self, handler: Handler, *, max_body_size: int,
                 before_body: Callable[[Request], None] | None = None) -> None:
        self._handler = handler
        self._max_body = max_body_size
        self._before_body = before_body
        self.active = 0

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":
            return
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in scope.headers.items()]
        host, _, port = scope.client.rpartition(":")
        req = Request(scope.method, scope.path, scope.query_string, headers, b"",
                      (host, int(port or 0)), True, scope.http_version == "1.0")
        self.active += 1
        task = asyncio.current_task()
        watcher: asyncio.Future[Any] | None = None
        try:
            try:
                if self._before_body is not None:
                    self._before_body(req)
                length = req.header("content-length")
                if length is not None and length.isdigit() and int(length) > self._max_body:
                    raise PayloadTooLarge("Request body too large.")
                body = await protocol()
                if len(body) > self._max_body:
                    raise PayloadTooLarge("Request body too large.")
                req.body = body
                watcher = asyncio.ensure_future(protocol.client_disconnect())
                watcher.add_done_callback(lambda _f: task.cancel() if task else None)
                resp = await self._handler(req)
            except InfernoError as err:
                resp = Response(err.status_code, err.to_json(), headers=err.headers())
            except Exception:
                log.exception("handler failed for %s %s", req.method, req.path)
                resp = Response(500, GENERIC_500)
            hdrs = [("content-type", resp.content_type), *(resp.headers or ())]
            if isinstance(resp, StreamingResponse):
                transport = protocol.response_stream(resp.status, hdrs)
                it = resp.chunks
                try:
                    async for chunk in it:
                        if chunk:
                            await transport.send_bytes(chunk)
                finally:
                    aclose: Any = getattr(it, "aclose", None)
                    if aclose is not None:
                        await aclose()
            else:
                protocol.response_bytes(resp.status, hdrs, resp.body)
        except asyncio.CancelledError:
            return
        finally:
            self.active -= 1
            if watcher is not None:
                watcher.remove_done_callback(lambda _f: None)
                watcher.cancel()


class GranianServer:
    def __init__(self, handler: Handler, *, max_body_size: int = 4 * 1024 * 1024,
                 before_body: Callable[[Request], None] | None = None,
                 **_ignored: Any) -> None:
        self.app = RsgiApp(handler, max_body_size=max_body_size, before_body=before_body)
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None
        self._port = 0

    @property
    def port(self) -> int:
        return self._port

    @property
    def active_requests(self) -> int:
        return self.app.active

    async def start(self, host: str, port: int, *, sock: socket.socket | None = None) -> int:
        from granian.constants import HTTPModes, Interfaces
        from granian.server.embed import Server

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = int(s.getsockname()[1])
        self._port = port
        self._server = Server(self.app, address=host, port=port, interface=Interfaces.RSGI,
                              http=HTTPModes.http1, websockets=False, log_enabled=False,
                              backlog=2048, runtime_threads=1)
        self._task = asyncio.create_task(self._server.serve())
        for _ in range(200):
            with contextlib.suppress(OSError):
                _, w = await asyncio.open_connection(host, port)
                w.close()
                break
            await asyncio.sleep(0.02)
        return port

    async def stop(self, grace: float = 10.0) -> None:
        if self._server is None:
            return
        self._server.stop()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, grace)
        self._server = None
