"""One accepted HTTP/1.1 connection: parsing and dispatch (writing: ``_server_write.py``).

Contract (see ``server.py`` for the public side):
- requests are answered strictly in order; while one is being handled, later pipelined
  ones are queued and reading is paused, so a client cannot make us buffer unboundedly;
- limit violations and parse errors are queued like requests, answered with an OpenAI
  error body and ``connection: close``, then the connection lingers briefly, discarding
  input, so the peer reads the answer instead of a TCP reset;
- when the peer goes away, the running handler task is cancelled (which also throws
  into a streaming iterator awaited by it) and the iterator is ``aclose()``d.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from ..core.errors import (
    HeadersTooLarge,
    InfernoError,
    InvalidRequest,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
)
from ._http import CONN_CLOSE
from ._messages import BodySink, Request, Response, StreamingResponse
from ._server_write import GENERIC_500, ResponseWriter

if TYPE_CHECKING:
    from .server import HttpServer

log = logging.getLogger("inferno.net")

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_METHODS: dict[bytes, str] = {
    m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD")
}


class _Abort(Exception):
    """Raised inside parser callbacks; the real error is in ``conn._error``."""


class ServerConnection(ResponseWriter, asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._loop = server._loop
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._client: tuple[str, int] | None = None
        self._lost = False
        # request being parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._body_limit = server._max_body_size
        self._sink: BodySink | None = None  # the body goes there instead (an upload)
        self._header_bytes = 0
        self._partial = 0
        self._in_headers = False
        self._in_body = False
        self._expect = False
        self._content_length = -1
        self._hosts = 0
        self._messages = 0  # requests begun on this connection
        self._head: Request | None = None  # built when its headers are complete
        self._error: InfernoError | None = None
        # dispatch
        self._task: asyncio.Task[None] | None = None
        self._request: Request | None = None
        self._pipeline: deque[Request | InfernoError] = deque()
        self._no_more = False  # parsing stopped (error or upgrade): close after the queue
        self._read_paused = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._stalled = False  # the peer stopped reading a stream: abort, don't flush
        self.deadline = math.inf  # only enforced while no handler runs

    # ---- transport callbacks -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop transports are not asyncio.Transport subclasses; same interface.
        transport = cast("asyncio.Transport", transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # AttributeError/OSError: a unix socket or an already closed one.
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._client = (str(peer[0]), int(peer[1]))
        server = self._server
        if len(server._conns) >= server._max_connections:
            err = Overloaded("Too many open connections; retry shortly.", retry_after=1)
            body = err.to_json()
            head = self._head_bytes(503, "application/json", err.headers(), CONN_CLOSE)
            transport.write(head + b"content-length: %d\r\n\r\n" % len(body) + body)
            transport.close()
            self._lost = self._no_more = True
            return
        server._conns.add(self)
        if server._stopping:
            transport.close()
            return
        self.deadline = self._loop.time() + server._header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._server._conns.discard(self)
        if self._request is not None:
            self._request.disconnected.set()
        for item in self._pipeline:
            if isinstance(item, Request):
                item.disconnected.set()
        self._pipeline.clear()
        self._drop_sink()
        if self._task is not None:
            self._task.cancel()
        self._wake_drain()

    def eof_received(self) -> bool | None:
        return None  # half-closed peer: close the transport (and cancel in-flight work)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    def data_received(self, data: bytes) -> None:
        if self._no_more:
            return  # lingering after an error, or past an upgrade: discard
        was_in_headers = self._in_headers
        begun = self._messages
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrades are unsupported; the request itself was parsed (bodies are
            # refused in on_headers_complete), so answer it and close.
            self._no_more = True
        except httptools.HttpParserError:
            err = self._error or InvalidRequest("Malformed HTTP request.")
            self._error = None
            self._fail(err)
            return
        if was_in_headers and self._in_headers and begun == self._messages:
            # The whole chunk was header bytes httptools buffers before any callback (a
            # chunk in which a new request began is counted by that request's callbacks).
            self._partial += len(data)
            if self._partial > self._server._max_header_size:
                self._fail(HeadersTooLarge("Request headers too large."))

    # ---- parser callbacks ----------------------------------------------------------
    def on_message_begin(self) -> None:
        self._in_headers = True
        self._url = b""
        self._headers = []
        self._body = []
        self._body_size = 0
        self._body_limit = self._server._max_body_size
        self._header_bytes = 0
        self._partial = 0
        self._expect = False
        self._content_length = -1
        self._hosts = 0
        self._messages += 1
        if self._task is None:
            self.deadline = self._loop.time() + self._server._header_timeout

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self._server._max_header_size:
            raise self._abort(HeadersTooLarge("Request URL too long."))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self._server._max_header_size:
            raise self._abort(HeadersTooLarge("Request headers too large."))
        if self._in_body:
            return  # a chunked trailer: never a request header (it arrives after auth)
        name = name.lower()
        self._headers.append((name, value))
        if name == b"content-length":
            try:
                self._content_length = int(value)
            except ValueError:
                raise self._abort(InvalidRequest("Invalid Content-Length.")) from None
        elif name == b"host":
            self._hosts += 1
        elif name == b"expect":
            self._expect = value.lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._in_body = True
        server = self._server
        if self._content_length > max(server._max_body_size, server._max_stream_size):
            raise self._abort(PayloadTooLarge("Request body too large."))
        parser = self._parser
        http10 = parser.get_http_version() == "1.0"
        if self._hosts > 1 or (self._hosts == 0 and not http10):
            raise self._abort(InvalidRequest("An HTTP/1.1 request needs exactly one Host header."))
        if (
            self._parser.should_upgrade()
            and self._parser.get_method() != b"CONNECT"
            and (
                self._content_length > 0 or any(k == b"transfer-encoding" for k, _ in self._headers)
            )
        ):
            raise self._abort(InvalidRequest("Protocol upgrade with a body is not supported."))
        req = self._head = self._new_request(http10)
        if server._before_body is not None:
            try:
                server._before_body(req)
            except InfernoError as err:
                raise self._abort(err) from None
            except Exception:
                log.exception("before_body failed for %s %s", req.method, req.path)
                raise self._abort(InfernoError()) from None
            sink = req.sink
            if sink is not None:
                self._sink = sink
                self._body_limit = min(sink.limit, server._max_stream_size)
        if self._content_length > self._body_limit:
            raise self._abort(PayloadTooLarge("Request body too large."))
        if self._task is None:  # one deadline for the whole body, never extended
            self.deadline = self._loop.time() + server._body_timeout
        if self._expect and self._task is None and not self._pipeline and self._transport:
            self._transport.write(_CONTINUE)

    def _new_request(self, http10: bool) -> Request:
        url = self._url
        if url[:1] == b"/":
            path, _, query = url.partition(b"?")
        else:  # absolute-form ("http://host/p?q") or "*": rare, so the slower parser
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                raise self._abort(InvalidRequest("Invalid request target.")) from None
            path, query = parsed.path or b"/", parsed.query or b""
        raw_method = self._parser.get_method()
        keep_alive = self._parser.should_keep_alive()
        if self._messages >= self._server._max_requests:
            keep_alive = False  # the last request this connection may carry
            self._no_more = True
        return Request(
            _METHODS.get(raw_method) or raw_method.decode("latin-1"),
            path.decode("latin-1"),
            query.decode("latin-1"),
            self._headers,
            b"",
            self._client,
            keep_alive,
            http10,
        )

    def on_body(self, chunk: bytes) -> None:
        self._body_size += len(chunk)
        if self._body_size > self._body_limit:
            raise self._abort(PayloadTooLarge("Request body too large."))
        sink = self._sink
        if sink is None:
            self._body.append(chunk)
            return
        try:
            sink.write(chunk)
        except InfernoError as err:
            raise self._abort(err) from None

    def on_message_complete(self) -> None:
        self._in_body = False
        req = self._head
        assert req is not None  # on_headers_complete built it
        self._head = None
        sink, self._sink = self._sink, None
        if sink is not None:
            try:
                sink.finish()
            except InfernoError as err:
                sink.abort()
                raise self._abort(err) from None
        body = self._body
        if body:
            req.body = body[0] if len(body) == 1 else b"".join(body)
            self._body = []
        if self._task is None and not self._pipeline:
            self._start(req)
        else:
            self._pipeline.append(req)
            self._pause_reading()

    def _abort(self, err: InfernoError) -> _Abort:
        self._error = err
        self._drop_sink()
        return _Abort()

    def _drop_sink(self) -> None:
        """A body being streamed into a sink will not complete: let the sink clean up."""
        sink, self._sink = self._sink, None
        if sink is not None:
            try:
                sink.abort()
            except Exception:
                log.exception("a body sink failed to abort")

    # ---- dispatch ------------------------------------------------------------------
    def _fail(self, err: InfernoError) -> None:
        self._no_more = True
        if self._task is None and not self._pipeline:
            self._send_error_and_linger(err)
        else:
            self._pipeline.append(err)
            self._pause_reading()

    def _start(self, item: Request | InfernoError) -> None:
        if isinstance(item, InfernoError):
            self._send_error_and_linger(item)
            return
        if self._server._stopping or self._lost:
            self.close()
            return
        self._request = item
        self._server._active += 1
        self._task = self._loop.create_task(self._run(item))

    async def _run(self, req: Request) -> None:
        keep_alive = False
        try:
            try:
                resp = await self._server._handler(req)
            except InfernoError as err:
                resp = Response(err.status_code, err.to_json(), headers=err.headers())
            except asyncio.CancelledError:
                if self._cancelled_by_us():
                    raise
                # A stray CancelledError from inside the handler, not a cancel of this
                # task: still answer, or the client would hang on this connection.
                log.error("handler for %s %s raised CancelledError", req.method, req.path)
                resp = Response(500, GENERIC_500)
            except Exception:
                log.exception("handler failed for %s %s", req.method, req.path)
                resp = Response(500, GENERIC_500)
            try:
                if isinstance(resp, StreamingResponse):
                    keep_alive = await self._send_stream(resp, req)
                else:
                    if not isinstance(resp, Response):
                        log.error("handler returned %r, not a Response", type(resp).__name__)
                        resp = Response(500, GENERIC_500)
                    keep_alive = self._send_response(resp, req)
            except asyncio.CancelledError:
                if self._cancelled_by_us():
                    raise
                log.error("stream for %s %s raised CancelledError", req.method, req.path)
                keep_alive = False
            except Exception:
                log.exception("sending the response for %s %s failed", req.method, req.path)
                keep_alive = False
        finally:
            self._server._active -= 1
            self._task = None
            self._request = None
        self._after_response(keep_alive)

    def _cancelled_by_us(self) -> bool:
        task = asyncio.current_task()
        return self._lost or self._server._stopping or (task is not None and task.cancelling() > 0)

    def _after_response(self, keep_alive: bool) -> None:
        if self._lost:
            return
        if not keep_alive or self._server._stopping:
            self.close()
            return
        if self._pipeline:
            self._start(self._pipeline.popleft())
            if self._pipeline or self._task is None:
                return
        elif self._no_more:
            self.close()
            return
        self.deadline = self._loop.time() + (
            self._server._header_timeout
            if self._in_headers or self._in_body
            else self._server._keepalive_timeout
        )
        if self._read_paused and not self._no_more and self._transport is not None:
            self._read_paused = False
            self._transport.resume_reading()

    def _pause_reading(self) -> None:
        if not self._read_paused and self._transport is not None and not self._lost:
            self._read_paused = True
            self._transport.pause_reading()

    # ---- used by HttpServer --------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._task is not None

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def expire(self) -> None:
        """The sweep found this idle connection past its deadline."""
        if self._in_body and not self._no_more:
            self._fail(RequestTimeout(
                f"The request body did not arrive within {self._server._body_timeout:g} s."))
        else:
            self.close()

    def abort(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._transport is not None:
            self._transport.abort()
