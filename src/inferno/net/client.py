"""A pooled HTTP/1.1 client on ``asyncio.Protocol`` + ``httptools``.

Contract:
- ``request()`` returns once the status line and headers arrived; the body is read with
  ``read()`` or streamed, as it arrives, with ``iter_chunks()`` (or ``next_chunk()``);
- keep-alive pool per (host, port), LIFO, idle sockets expire after ``idle_ttl``; a
  connection goes back only when its body was fully received and keep-alive agreed;
  ``close()`` on an unfinished response closes the socket - this is how a client
  disconnect aborts an upstream generation; cancellation anywhere does the same;
- errors: refused / connect timeout -> ``UpstreamConnectError``; no headers within
  ``header_timeout`` or no chunk within ``idle_timeout`` -> ``UpstreamTimeout``; closed
  before any byte -> ``UpstreamConnectError``, except on a reused pooled socket (stale
  keep-alive race), which is retried once on a fresh connection; garbage, or a close
  mid-body -> ``UpstreamProtocolError``; a body framed by the connection close (neither
  content-length nor chunked) cannot be told from a cut one: ``close_delimited`` says so;
- error messages name the upstream's address: they are for logs, never for clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from types import TracebackType
from typing import Any

import orjson

from ..core.errors import InfernoError, UpstreamConnectError, UpstreamProtocolError
from ._client_conn import ClientConnection, EarlyClose
from ._http import check_name, check_value, find_header

__all__ = ["HttpClient", "UpstreamResponse", "get_json"]

_SKIP = frozenset((b"host", b"content-length", b"transfer-encoding"))
_NO_BODY_METHODS = frozenset(("GET", "HEAD", "DELETE", "OPTIONS"))
_SMALL_BODY = 64 * 1024


class UpstreamResponse:
    __slots__ = ("_client", "_conn", "close_delimited", "headers", "status")

    def __init__(self, conn: ClientConnection, client: HttpClient) -> None:
        self.status = conn.status
        self.headers = conn.headers
        # No content-length, not chunked: the body ends where the connection closes, so a
        # peer that dies mid-body looks like a complete (shorter) body. Callers that care
        # must check the content itself (a JSON body parses, an SSE stream ends in [DONE]).
        self.close_delimited = conn.close_delimited
        self._conn: ClientConnection | None = conn
        self._client = client

    def header(self, name: str) -> str | None:
        return find_header(self.headers, name)

    async def read(self) -> bytes:
        conn = self._conn
        if conn is None:
            return b""
        parts: list[bytes] = []
        size, limit = 0, self._client._max_body_size
        try:
            while (chunk := await conn.next_chunk(None)) is not None:
                size += len(chunk)
                if size > limit:
                    raise UpstreamProtocolError("Upstream response body too large.")
                parts.append(chunk)
        except BaseException:
            self._abort()
            raise
        self.close()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def iter_chunks(self, idle_timeout: float | None = None) -> AsyncGenerator[bytes, None]:
        conn = self._conn
        if conn is None:
            return
        try:
            while (chunk := await conn.next_chunk(idle_timeout)) is not None:
                yield chunk
        except BaseException:
            # Includes GeneratorExit: the consumer stopped early, the body is unfinished.
            self._abort()
            raise
        self.close()

    async def next_chunk(self, idle_timeout: float | None = None) -> bytes | None:
        """The body bytes that arrived since the last call (waiting up to ``idle_timeout``
        for some); ``None`` once the body is complete. ``iter_chunks`` without the
        generator, for a relay's hot path. An error or cancellation closes the connection."""
        conn = self._conn
        if conn is None:
            return None
        try:
            chunk = await conn.next_chunk(idle_timeout)
        except BaseException:
            self._abort()
            raise
        if chunk is None:
            self.close()
        return chunk

    def close(self) -> None:
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        if conn.reusable:
            self._client._release(conn)
        else:
            conn.close()

    def _abort(self) -> None:
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.close()

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class HttpClient:
    def __init__(self, *, max_idle_per_host: int = 64, idle_ttl: float = 30.0,
                 max_head_size: int = 64 * 1024, max_body_size: int = 256 * 1024 * 1024
                 ) -> None:
        # A misbehaving upstream cannot make us buffer without bound: a response head
        # over max_head_size, or a body read whole (read()) over max_body_size, is an
        # UpstreamProtocolError. Streamed bodies are passed on chunk by chunk.
        self._max_head_size = max_head_size
        self._max_body_size = max_body_size
        self._max_idle = max_idle_per_host
        self._idle_ttl = idle_ttl
        self._idle: dict[tuple[str, int], list[ClientConnection]] = {}
        self._conns: set[ClientConnection] = set()
        self._host_lines: dict[tuple[str, int], bytes] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # bound on first use

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    async def request(
        self,
        host: str,
        port: int,
        method: str,
        target: str,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes = b"",
        connect_timeout: float = 5.0,
        header_timeout: float = 60.0,
    ) -> UpstreamResponse:
        if self._closed:
            raise RuntimeError("HttpClient is closed")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        key = (host, port)
        head = self._head(key, method, target, headers, body)
        conn = self._acquire(key)
        if conn is not None:
            try:
                return await self._exchange(conn, head, body, method, header_timeout)
            except EarlyClose:
                pass  # stale keep-alive socket: the server closed it as we wrote; retry once
        conn = await self._connect(key, connect_timeout)
        try:
            return await self._exchange(conn, head, body, method, header_timeout)
        except EarlyClose as exc:
            raise UpstreamConnectError(
                f"Upstream {host}:{port} closed the connection without answering."
            ) from exc.__cause__

    async def aclose(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._idle.clear()
        for conn in list(self._conns):
            conn.close()
        # Let connection_lost callbacks run so sockets are really gone on return.
        for _ in range(3):
            if not self._conns:
                break
            await asyncio.sleep(0)

    # ---- internals -----------------------------------------------------------------
    def _head(
        self,
        key: tuple[str, int],
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]] | None,
        body: bytes,
    ) -> bytes:
        if not target or " " in target or "\r" in target or "\n" in target:
            raise ValueError(f"invalid request target {target!r}")
        if not method.isalpha():
            raise ValueError(f"invalid method {method!r}")
        host_line = self._host_lines.get(key)
        if host_line is None:
            host, port = key
            shown = f"[{host}]" if ":" in host else host
            host_line = check_value(f"host: {shown}:{port}".encode("latin-1")) + b"\r\n"
            self._host_lines[key] = host_line
        parts = [
            method.encode("ascii"),
            b" ",
            target.encode("latin-1"),
            b" HTTP/1.1\r\n",
            host_line,
        ]
        if body or method not in _NO_BODY_METHODS:
            parts.append(b"content-length: %d\r\n" % len(body))
        if headers:
            for name, value in headers:
                if name.lower() in _SKIP:
                    continue
                parts += (check_name(name), b": ", check_value(value), b"\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    async def _exchange(
        self, conn: ClientConnection, head: bytes, body: bytes, method: str, header_timeout: float
    ) -> UpstreamResponse:
        transport = conn.transport
        assert transport is not None
        conn.begin(method == "HEAD")
        try:
            if len(body) < _SMALL_BODY:
                transport.write(head + body if body else head)
            else:
                transport.write(head)
                transport.write(body)
            await conn.wait_headers(header_timeout)
        except BaseException:
            conn.close()
            raise
        return UpstreamResponse(conn, self)

    async def _connect(self, key: tuple[str, int], limit_s: float) -> ClientConnection:
        host, port = key
        try:
            async with asyncio.timeout(limit_s):
                _, conn = await self._loop.create_connection(
                    lambda: ClientConnection(self, key), host, port
                )
        except TimeoutError as exc:
            raise UpstreamConnectError(f"Connecting to {host}:{port} timed out.") from exc
        except OSError as exc:
            raise UpstreamConnectError(f"Cannot connect to {host}:{port}: {exc}.") from exc
        return conn

    def _acquire(self, key: tuple[str, int]) -> ClientConnection | None:
        stack = self._idle.get(key)
        if not stack:
            return None
        expired = self._loop.time() - self._idle_ttl
        while stack:
            conn = stack.pop()
            transport = conn.transport
            if (
                conn.lost
                or transport is None
                or transport.is_closing()
                or conn.idle_since < expired
            ):
                conn.close()
                continue
            return conn
        return None

    def _release(self, conn: ClientConnection) -> None:
        conn.active = False
        if self._closed or conn.lost:
            conn.close()
            return
        stack = self._idle.get(conn.key)
        if stack is None:
            stack = self._idle[conn.key] = []
        if len(stack) >= self._max_idle:
            conn.close()
            return
        conn.idle_since = self._loop.time()
        stack.append(conn)
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(self._sweep_interval(), self._sweep)

    def _sweep_interval(self) -> float:
        return max(0.05, min(5.0, self._idle_ttl / 2))

    def _sweep(self) -> None:
        self._sweeper = None
        expired = self._loop.time() - self._idle_ttl
        remaining = False
        for stack in self._idle.values():
            # Oldest first (LIFO stack): stop at the first one still fresh.
            n = 0
            while n < len(stack) and (stack[n].idle_since < expired or stack[n].lost):
                stack[n].close()
                n += 1
            if n:
                del stack[:n]
            remaining = remaining or bool(stack)
        if remaining and not self._closed:
            self._sweeper = self._loop.call_later(self._sweep_interval(), self._sweep)

    def _conn_made(self, conn: ClientConnection) -> None:
        self._conns.add(conn)

    def _conn_lost(self, conn: ClientConnection) -> None:
        self._conns.discard(conn)
        if not conn.active:
            stack = self._idle.get(conn.key)
            if stack is not None and conn in stack:
                stack.remove(conn)


async def get_json(client: HttpClient, host: str, port: int, target: str, *, within: float) -> Any:
    """``GET target`` and its decoded JSON body, or ``None`` when no usable answer came
    within ``within`` seconds (refused, slow, not 200, not JSON): for polls of ops routes."""
    try:
        async with asyncio.timeout(within):
            async with await client.request(
                host, port, "GET", target, connect_timeout=within, header_timeout=within
            ) as resp:
                body = await resp.read()
    except (InfernoError, OSError, TimeoutError):
        return None
    if resp.status != 200:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
