"""One upstream HTTP/1.1 connection: parses responses and hands body bytes to a reader.

Contract (see ``client.py`` for the public side):
- one exchange at a time; ``begin()`` resets the per-response state;
- body bytes are queued as they arrive and the reader is woken through one future;
  reading from the socket pauses while more than ``HIGH_WATER`` bytes are unread;
- the connection is reusable only when the message completed, keep-alive was agreed,
  and no byte arrived after it;
- a close before any response byte raises :class:`EarlyClose` (the pool may retry it on
  a fresh connection when it was a reused one); any later loss before the body is
  complete is an ``UpstreamProtocolError`` - never a silent truncation.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING, cast

import httptools

from ..core.errors import UpstreamProtocolError, UpstreamTimeout

if TYPE_CHECKING:
    from .client import HttpClient

HIGH_WATER = 1024 * 1024


class EarlyClose(Exception):
    """The peer closed before sending any response byte."""


class _Extra(Exception):
    """Bytes that cannot belong to this exchange (a second message, a 101 switch)."""


def _fire_timeout(fut: asyncio.Future[None], what: str) -> None:
    if not fut.done():
        fut.set_exception(UpstreamTimeout(f"Timed out waiting for the upstream {what}."))


class ClientConnection(asyncio.Protocol):
    def __init__(self, client: HttpClient, key: tuple[str, int]) -> None:
        self._client = client
        self._loop = client._loop
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.lost = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._read_paused = False
        self.active = False
        self._head_request = False
        self._got_bytes = False
        self._informational = False
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self._close_delimited = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._buf: list[bytes] = []
        self._buf_size = 0
        self._head_size = 0  # bytes read while the response head is incomplete
        self.error: BaseException | None = None

    # ---- lifecycle -----------------------------------------------------------------
    def begin(self, head_request: bool) -> None:
        self.active = True
        self._head_request = head_request
        self._got_bytes = False
        self._informational = False
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self._close_delimited = False
        self.status = 0
        self.headers = []
        self._buf = []
        self._buf_size = 0
        self._head_size = 0
        self.error = None

    @property
    def close_delimited(self) -> bool:
        return self._close_delimited

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and self.error is None and not self.lost

    def close(self) -> None:
        self.keep_alive = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # ---- transport callbacks -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop transports are not asyncio.Transport subclasses; same interface.
        transport = cast("asyncio.Transport", transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client._conn_made(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._client._conn_lost(self)
        if self.active and not self.complete and self.error is None:
            err: Exception | None = None
            if not self.headers_done:
                if self._got_bytes:
                    err = UpstreamProtocolError("Upstream closed mid-headers.")
                else:
                    err = EarlyClose()
            elif self._close_delimited and exc is None:
                self.complete = True  # the body was delimited by this very close
            else:
                err = UpstreamProtocolError("Upstream closed the connection mid-body.")
            if err is not None:
                err.__cause__ = exc
                self.error = err
        self._wake()

    def eof_received(self) -> bool | None:
        return None

    def data_received(self, data: bytes) -> None:
        if not self.active or self.complete:
            # Unsolicited bytes: the connection's framing can no longer be trusted.
            self.close()
            return
        self._got_bytes = True
        heading = not self.headers_done
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            # After completion this is _Extra (more bytes than the response): not an
            # error for this response, but the socket cannot be reused.
            if not self.complete:
                err = UpstreamProtocolError("Malformed upstream response.")
                err.__cause__ = exc
                self.error = err
            self.close()
            self._wake()
        except httptools.HttpParserUpgrade as exc:
            err = UpstreamProtocolError("Unexpected protocol upgrade from upstream.")
            err.__cause__ = exc
            self.error = err
            self.close()
            self._wake()
            return
        if heading and not self.headers_done:
            # Everything read so far is head: a peer sending an endless header block
            # must not grow this buffer (httptools keeps a partial header line).
            self._head_size += len(data)
            if self._head_size > self._client._max_head_size:
                self.error = UpstreamProtocolError("Upstream response headers too large.")
                self.close()
                self._wake()

    # ---- parser callbacks ----------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.complete:
            raise _Extra()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._informational = True  # e.g. 103 Early Hints: skip, the real one follows
            self.headers = []
            return
        if status == 101:
            raise _Extra()  # we never ask to switch protocols: the framing is gone
        self.status = status
        self.headers_done = True
        if self._head_request:
            # httptools cannot be told a HEAD answer has no body; never reuse this socket.
            self.complete = True
        else:
            has_length = False
            chunked = False
            for k, v in self.headers:
                if k == b"content-length":
                    has_length = True
                elif k == b"transfer-encoding":
                    chunked = v.lower().rstrip().endswith(b"chunked")
            self._close_delimited = not has_length and not chunked
        self._wake()

    def on_body(self, chunk: bytes) -> None:
        if self.complete:
            return
        self._buf.append(chunk)
        self._buf_size += len(chunk)
        if self._buf_size > HIGH_WATER and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self.complete:
            return
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()
        self._wake()

    # ---- reader side ---------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self, limit_s: float | None, what: str) -> None:
        # A bare timer on one future: cheaper than asyncio.timeout() per chunk.
        fut = self._loop.create_future()
        self._waiter = fut
        if limit_s is None:
            await fut
            return
        handle = self._loop.call_later(limit_s, _fire_timeout, fut, what)
        try:
            await fut
        finally:
            handle.cancel()

    async def wait_headers(self, limit_s: float) -> None:
        deadline = self._loop.time() + limit_s
        while not self.headers_done:
            if self.error is not None:
                raise self.error
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                raise UpstreamTimeout("Timed out waiting for the upstream response headers.")
            await self._wait(remaining, "response headers")

    async def next_chunk(self, idle_timeout: float | None) -> bytes | None:
        """Buffered body bytes, joined; ``None`` once the body is complete."""
        while True:
            buf = self._buf
            if buf:
                data = buf[0] if len(buf) == 1 else b"".join(buf)
                self._buf = []
                self._buf_size = 0
                if self._read_paused and self.transport is not None:
                    self._read_paused = False
                    self.transport.resume_reading()
                return data
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            await self._wait(idle_timeout, "next body chunk")
