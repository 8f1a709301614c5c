"""Serving a :data:`Handler` through uvicorn (httptools parser) with a raw ASGI callable.

uvicorn owns the wire (parsing, framing, keep-alive, pipelining, HEAD, limits on
connections); this module adapts its ASGI messages to Inferno's ``Request`` and
``Response``/``StreamingResponse`` and adds what a gateway needs on top:

- the body is refused early: ``Content-Length`` over the limit -> 413 before a byte of it
  is read; ``before_body(request)`` (e.g. authentication) runs on the headers alone;
- one deadline for the whole body (a slow upload cannot extend it byte by byte);
- a client that goes away cancels the handler task (so an upstream request is abandoned
  and its node slot freed), and a client that stops reading a stream is cut off after
  ``send_timeout`` seconds of blocked writes, checked by one sweep, not a timer per chunk;
- the handler's ``InfernoError`` becomes its status and OpenAI JSON body; anything else
  is logged and answered with a generic 500 body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from inferno.core.errors import InfernoError, PayloadTooLarge, RequestTimeout
from inferno.net import Handler, Request, Response, StreamingResponse

log = logging.getLogger("inferno.net")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

GENERIC_500 = (
    b'{"error":{"message":"The server had an error while processing your request.",'
    b'"type":"server_error","param":null,"code":"internal_error"}}'
)
_SSE_EXTRA = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
_METHODS = {m: m for m in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD")}


class _Exchange:
    """One request in flight: what the sweep needs to cut off a blocked writer."""

    __slots__ = ("blocked_since", "task")

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self.task = task
        self.blocked_since = 0.0  # loop time a write started waiting; 0 while not blocked


class AsgiApp:
    def __init__(
        self,
        handler: Handler,
        *,
        max_body_size: int,
        body_timeout: float = 30.0,
        send_timeout: float = 30.0,
        before_body: Callable[[Request], None] | None = None,
        on_reject: Callable[[InfernoError], None] | None = None,
    ) -> None:
        self._handler = handler
        self._max_body = max_body_size
        self._body_timeout = body_timeout
        self._send_timeout = send_timeout
        self._before_body = before_body
        self._on_reject = on_reject
        self._exchanges: set[_Exchange] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    @property
    def active_requests(self) -> int:
        return len(self._exchanges)

    # ---- lifecycle -----------------------------------------------------------------
    def start_sweeper(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._schedule_sweep()

    def stop_sweeper(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _schedule_sweep(self) -> None:
        assert self._loop is not None
        interval = max(0.05, min(1.0, self._send_timeout / 4))
        self._sweeper = self._loop.call_later(interval, self._sweep)

    def _sweep(self) -> None:
        assert self._loop is not None
        limit = self._loop.time() - self._send_timeout
        for ex in list(self._exchanges):
            if 0.0 < ex.blocked_since < limit and ex.task is not None:
                log.warning("client stopped reading for %.0f s; closing its stream",
                            self._send_timeout)
                ex.blocked_since = 0.0
                ex.task.cancel()
        self._schedule_sweep()

    # ---- the ASGI callable ---------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _lifespan(receive, send)
            return
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        method: str = scope["method"]
        client = scope.get("client")
        req = Request(
            _METHODS.get(method, method),
            # The path as sent, never percent-decoded: routing and auth match exact bytes.
            raw_path.decode("latin-1"),
            scope["query_string"].decode("latin-1"),
            scope["headers"],
            b"",
            (str(client[0]), int(client[1])) if client else None,
            True,
            scope["http_version"] == "1.0",
        )
        ex = _Exchange(asyncio.current_task())
        self._exchanges.add(ex)
        watcher: asyncio.Task[None] | None = None
        try:
            try:
                if self._before_body is not None:
                    self._before_body(req)
                req.body = await self._read_body(receive, req)
                watcher = asyncio.ensure_future(self._watch(receive, req, ex))
                resp = await self._handler(req)
            except InfernoError as err:
                if isinstance(err, PayloadTooLarge | RequestTimeout) and self._on_reject:
                    self._reject(err)
                resp = Response(err.status_code, err.to_json(), headers=err.headers())
            except asyncio.CancelledError:
                if req.disconnected.is_set():
                    return  # the client left: nobody to answer
                raise
            except Exception:
                log.exception("handler failed for %s %s", req.method, req.path)
                resp = Response(500, GENERIC_500)
            if isinstance(resp, StreamingResponse):
                await self._send_stream(resp, req, ex, send)
            else:
                await self._send_response(resp, req, send)
        except asyncio.CancelledError:
            if req.disconnected.is_set() or ex.task is None:
                return  # client gone or cut off for not reading: uvicorn closes the socket
            raise
        finally:
            self._exchanges.discard(ex)
            ex.task = None
            if watcher is not None:
                watcher.cancel()

    def _reject(self, err: InfernoError) -> None:
        assert self._on_reject is not None
        try:
            self._on_reject(err)
        except Exception:  # a logging hook must never break the answer
            log.exception("on_reject hook failed")

    async def _read_body(self, receive: Receive, req: Request) -> bytes:
        length = req.header("content-length")
        if length is not None and length.isdigit() and int(length) > self._max_body:
            raise PayloadTooLarge("Request body too large.")
        if length == "0" or (length is None and req.header("transfer-encoding") is None):
            return b""
        parts: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self._body_timeout):
                while True:
                    msg = await receive()
                    if msg["type"] != "http.request":
                        req.disconnected.set()
                        raise asyncio.CancelledError
                    chunk = msg.get("body", b"")
                    if chunk:
                        size += len(chunk)
                        if size > self._max_body:
                            raise PayloadTooLarge("Request body too large.")
                        parts.append(chunk)
                    if not msg.get("more_body", False):
                        break
        except TimeoutError as exc:
            raise RequestTimeout(
                f"The request body did not arrive within {self._body_timeout:g} s."
            ) from exc
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _watch(self, receive: Receive, req: Request, ex: _Exchange) -> None:
        # After the body, the next message is http.disconnect: the client left (or the
        # response completed, by which time this watcher is cancelled).
        with contextlib.suppress(Exception):
            msg = await receive()
            if msg["type"] == "http.disconnect" and ex.task is not None:
                req.disconnected.set()
                ex.task.cancel()

    async def _send_response(self, resp: Response, req: Request, send: Send) -> None:
        body = resp.body
        headers = _encode_headers(resp.headers, resp.content_type)
        if resp.status not in (204, 304):
            headers.append((b"content-length", b"%d" % len(body)))
        else:
            body = b""
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _send_stream(
        self, resp: StreamingResponse, req: Request, ex: _Exchange, send: Send
    ) -> None:
        it = resp.chunks
        loop = asyncio.get_running_loop()
        try:
            headers = _encode_headers(resp.headers, resp.content_type)
            if resp.content_type.startswith("text/event-stream"):
                headers += _SSE_EXTRA
            await send({"type": "http.response.start", "status": resp.status,
                        "headers": headers})
            if req.method == "HEAD":
                await send({"type": "http.response.body", "body": b""})
                return
            msg: dict[str, Any] = {"type": "http.response.body", "body": b"", "more_body": True}
            try:
                async for chunk in it:
                    if not chunk:
                        continue
                    msg["body"] = chunk
                    ex.blocked_since = loop.time()
                    await send(msg)
                    ex.blocked_since = 0.0
            except InfernoError as err:
                # Headers are out: the only honest signal left is an unterminated body,
                # which uvicorn gives by closing the connection when we return early.
                log.warning("stream aborted for %s %s: %s", req.method, req.path, err)
                return
            except Exception:
                log.exception("stream failed for %s %s", req.method, req.path)
                return
            await send({"type": "http.response.body", "body": b""})
        finally:
            aclose: Any = getattr(it, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    log.exception("closing the stream iterator failed")


def _encode_headers(
    headers: list[tuple[str, str]] | None, content_type: str
) -> list[tuple[bytes, bytes]]:
    out = [(b"content-type", content_type.encode("latin-1"))]
    if headers:
        for name, value in headers:
            out.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    return out


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


__all__ = ["GENERIC_500", "AsgiApp"]
