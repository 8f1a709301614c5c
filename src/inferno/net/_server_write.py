"""Writing a connection's answers: heads, whole bodies, chunked streams, refusals.

The half of :class:`~inferno.net._server_conn.ServerConnection` that writes (a mixin, so the
hot path pays no extra call): ``Response`` bodies carry ``content-length`` (none for HEAD,
204, 304); streams are chunked (close-delimited for HTTP/1.0) and flushed per chunk; a peer
that stops reading for ``send_timeout`` is aborted; a refusal is answered, then the
connection lingers, discarding input, so the peer reads it instead of a reset.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from typing import TYPE_CHECKING, Any

from ..core.errors import InfernoError
from ._http import CONN_CLOSE, CONN_KEEP, CONN_NONE
from ._messages import Request, Response, StreamingResponse

if TYPE_CHECKING:
    from .server import HttpServer

log = logging.getLogger("inferno.net")

GENERIC_500 = (
    b'{"error":{"message":"The server had an error while processing your request.",'
    b'"type":"server_error","param":null,"code":"internal_error"}}'
)
_CHUNK_END = b"0\r\n\r\n"
_TE_CHUNKED = b"transfer-encoding: chunked\r\n\r\n"
_LINGER_S = 1.0
_SMALL_BODY = 64 * 1024


class ResponseWriter:
    # State owned by ServerConnection, declared here for the writing half.
    _server: HttpServer
    _loop: asyncio.AbstractEventLoop
    _transport: asyncio.Transport | None
    _lost: bool
    _no_more: bool
    _pipeline: deque[Request | InfernoError]
    _read_paused: bool
    _write_paused: bool
    _drain: asyncio.Future[None] | None
    _stalled: bool
    deadline: float

    # ---- writing -------------------------------------------------------------------
    def _conn_mode(self, req: Request) -> int:
        if not req._keep_alive or self._server._stopping or (self._no_more and not self._pipeline):
            return CONN_CLOSE
        return CONN_KEEP if req._http10 else CONN_NONE

    def _head_bytes(
        self, status: int, content_type: str, headers: list[tuple[str, str]] | None, mode: int
    ) -> bytes:
        return self._server._heads.encode(status, content_type, headers, mode)

    def _send_response(self, resp: Response, req: Request) -> bool:
        mode = self._conn_mode(req)
        status = resp.status
        body = resp.body
        try:
            if not isinstance(body, bytes | bytearray | memoryview):
                raise ValueError(f"response body is {type(body).__name__}, not bytes")
            head = self._head_bytes(status, resp.content_type, resp.headers, mode)
        except (ValueError, UnicodeEncodeError):
            log.exception("invalid response for %s %s", req.method, req.path)
            status, body = 500, GENERIC_500
            head = self._head_bytes(status, "application/json", None, mode)
        if status == 204 or status == 304:
            body = b""  # these must carry neither a body nor content-length
            head += b"\r\n"
        else:
            head += b"content-length: %d\r\n\r\n" % len(body)
            if req.method == "HEAD":
                body = b""  # the length its GET would have, and no body
        transport = self._transport
        if transport is not None and not self._lost:
            if len(body) < _SMALL_BODY:
                transport.write(head + body)
            else:
                transport.write(head)
                transport.write(body)
        return mode != CONN_CLOSE

    async def _send_stream(self, resp: StreamingResponse, req: Request) -> bool:
        it = resp.chunks
        chunked = not req._http10  # HTTP/1.0 has no chunked coding: close-delimit instead
        mode = self._conn_mode(req) if chunked else CONN_CLOSE
        transport = self._transport
        assert transport is not None
        try:
            try:
                head = self._head_bytes(resp.status, resp.content_type, resp.headers, mode)
            except (ValueError, UnicodeEncodeError):
                log.exception("invalid response for %s %s", req.method, req.path)
                return self._send_response(Response(500, GENERIC_500), req)
            if self._lost:
                return False
            transport.write(head + (_TE_CHUNKED if chunked else b"\r\n"))
            if req.method == "HEAD":
                return mode != CONN_CLOSE
            try:
                async for chunk in it:
                    if self._lost:
                        return False
                    if not chunk:
                        continue  # an empty chunk would end the chunked body
                    if chunked:
                        transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                    else:
                        transport.write(chunk)
                    if self._write_paused and not await self._wait_drain():
                        log.warning("client stopped reading %s %s for %g s; cutting it off",
                                    req.method, req.path, self._server._send_timeout)
                        self._stalled = True
                        return False
            except InfernoError as err:
                log.warning("stream aborted for %s %s: %s", req.method, req.path, err)
                self.close()
                return False
            except Exception:
                # Headers are out: the only honest signal left is an unterminated body.
                log.exception("stream failed for %s %s", req.method, req.path)
                self.close()
                return False
            if chunked and not self._lost:
                transport.write(_CHUNK_END)
            return mode != CONN_CLOSE
        finally:
            aclose: Any = getattr(it, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    log.exception("closing the stream iterator failed")
            if self._stalled and self._transport is not None:
                self._transport.abort()  # close() would wait to flush to a peer not reading

    async def _wait_drain(self) -> bool:
        """False when the peer has not read for ``send_timeout`` seconds."""
        if self._lost or not self._write_paused:
            return True
        if self._drain is None or self._drain.done():
            self._drain = self._loop.create_future()
        try:
            async with asyncio.timeout(self._server._send_timeout):
                await asyncio.shield(self._drain)
        except TimeoutError:
            return False
        return True

    def _wake_drain(self) -> None:
        waiter = self._drain
        if waiter is not None:
            self._drain = None
            if not waiter.done():
                waiter.set_result(None)

    def _send_error_and_linger(self, err: InfernoError) -> None:
        transport = self._transport
        if transport is None or self._lost:
            return
        hook = self._server.on_reject
        if hook is not None:
            try:
                hook(err)
            except Exception:  # a logging hook must never break the connection's answer
                log.exception("on_reject hook failed")
        head = self._head_bytes(err.status_code, "application/json", err.headers(), CONN_CLOSE)
        body = err.to_json()
        transport.write(head + b"content-length: %d\r\n\r\n" % len(body) + body)
        self.deadline = math.inf
        if transport.can_write_eof():
            transport.write_eof()
            # Keep reading (and discarding) so unread request bytes do not turn our
            # close into a reset that destroys the answer before the peer reads it.
            if self._read_paused:
                self._read_paused = False
                transport.resume_reading()
            self._loop.call_later(_LINGER_S, self.close)
        else:
            transport.close()

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
