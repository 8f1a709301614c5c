"""The objects a server handler receives and returns.

Contract: ``Request`` is built once per request by the connection and never copied;
``Response`` and ``StreamingResponse`` are plain carriers - they are encoded (and their
headers validated against CR/LF injection) only when written, by the connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import orjson

from ._http import find_header


class BodySink(Protocol):
    """Where a request's body goes instead of ``Request.body``, chunk by chunk as it is read
    (an upload streamed to disk). A ``before_body`` hook sets ``request.sink``; the
    connection then allows up to ``limit`` bytes, calls ``write`` per chunk and ``finish``
    at the end (an ``InfernoError`` from either is the answer), or ``abort`` when the body
    is refused or the client goes away. All three run on the event loop: keep them short."""

    limit: int

    def write(self, chunk: bytes) -> None: ...

    def finish(self) -> None: ...

    def abort(self) -> None: ...


class Request:
    __slots__ = (
        "_http10",
        "_keep_alive",
        "auth",
        "body",
        "client",
        "disconnected",
        "headers",
        "method",
        "path",
        "query",
        "sink",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        client: tuple[str, int] | None,
        keep_alive: bool,
        http10: bool,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.client = client
        self.disconnected = asyncio.Event()
        # Whatever a ``before_body`` hook established from the headers (the proxy: the
        # authenticated principal), so the handler does not redo it.
        self.auth: object | None = None
        self.sink: BodySink | None = None
        self._keep_alive = keep_alive
        self._http10 = http10

    def header(self, name: str) -> str | None:
        return find_header(self.headers, name)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path}>"


class Response:
    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int = 200,
        body: bytes = b"",
        *,
        headers: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers
        self.content_type = content_type

    @classmethod
    def json(
        cls, obj: Any, status: int = 200, headers: list[tuple[str, str]] | None = None
    ) -> Response:
        return cls(status, orjson.dumps(obj), headers=headers)


class StreamingResponse:
    """Sent chunked; each yielded bytes object is written and flushed as it arrives."""

    __slots__ = ("chunks", "content_type", "headers", "status")

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        status: int = 200,
        *,
        headers: list[tuple[str, str]] | None = None,
        content_type: str = "text/event-stream",
    ) -> None:
        self.chunks = chunks
        self.status = status
        self.headers = headers
        self.content_type = content_type


Handler = Callable[[Request], Awaitable[Response | StreamingResponse]]
