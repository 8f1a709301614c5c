"""A fake HTTP file server on loopback with fault knobs, for model download tests.

One connection per request (``Connection: close``), raw asyncio, so a test controls every
byte: cut the body at byte N, flip a byte, stall, answer 429/503 with ``Retry-After``,
redirect to another server (127.0.0.2 is loopback too), ignore ``Range``, change the ETag.
``Range: bytes=a-b`` is honoured (parts of a parallel download); a 200 says ``Accept-Ranges``.
Every request is recorded (path, lower-cased headers, status, range start, bytes sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
from dataclasses import dataclass, field


@dataclass
class Faults:
    cut_at: int | None = None  # close the connection once this many file bytes went out
    cuts: int = 1  # how many responses are cut
    flip_at: int | None = None  # this byte of the file is sent xor 0xFF
    stall_at: int | None = None  # stop sending at this byte (once) for stall_for seconds
    stall_for: float = 30.0
    errors: list[tuple[int, float | None]] = field(default_factory=list)  # (status, retry-after)
    redirect_to: str | None = None  # base URL: answer 302 to redirect_to + path
    ignore_range: bool = False  # always answer 200 with the whole file
    chunk: int = 64 * 1024
    delay: float = 0.0  # seconds between chunks (throttle)


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    status: int = 0
    range_start: int | None = None
    range_end: int | None = None  # inclusive, when the request named one
    sent: int = 0  # body bytes written


class FileServer:
    def __init__(self, host: str = "127.0.0.1", ssl: ssl_module.SSLContext | None = None) -> None:
        self.host = host
        self.ssl = ssl  # serve https:// with this context
        self.files: dict[str, bytes] = {}
        self.faults = Faults()
        self.etag = '"v1"'
        self.requests: list[Seen] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl else 'http'}://{self.host}:{self.port}"

    @property
    def bytes_sent(self) -> int:
        return sum(r.sent for r in self.requests)

    async def start(self) -> FileServer:
        self._server = await asyncio.start_server(self._serve, self.host, 0, ssl=self.ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            _method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            seen = Seen(path, headers)
            self.requests.append(seen)
            await self._answer(seen, writer)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, asyncio.CancelledError):
            pass  # cancelled: the server stopped during a stall
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, seen: Seen, writer: asyncio.StreamWriter) -> None:
        f = self.faults
        if f.errors:
            status, retry_after = f.errors.pop(0)
            extra = f"Retry-After: {retry_after:g}\r\n" if retry_after is not None else ""
            return await self._head(writer, seen, status, extra + "Content-Length: 0\r\n")
        if f.redirect_to:
            return await self._head(
                writer, seen, 302, f"Location: {f.redirect_to}{seen.path}\r\nContent-Length: 0\r\n"
            )
        body = self.files.get(seen.path.split("?", 1)[0])
        if body is None:
            return await self._head(writer, seen, 404, "Content-Length: 0\r\n")
        start, stop = 0, len(body)
        rng = seen.headers.get("range", "")
        if_range = seen.headers.get("if-range")
        if (
            rng.startswith("bytes=")
            and not f.ignore_range
            and (if_range is None or if_range == self.etag)
        ):
            first, _, last = rng[6:].partition("-")
            start = int(first)
            stop = min(len(body), int(last) + 1) if last else len(body)
            seen.range_start = start
            seen.range_end = int(last) if last else None
            await self._head(
                writer,
                seen,
                206,
                f"Content-Range: bytes {start}-{stop - 1}/{len(body)}\r\n"
                f"Content-Length: {stop - start}\r\nETag: {self.etag}\r\n",
            )
        else:
            ranges = "" if f.ignore_range else "Accept-Ranges: bytes\r\n"
            await self._head(
                writer,
                seen,
                200,
                f"Content-Length: {len(body)}\r\nETag: {self.etag}\r\n{ranges}",
            )
        pos = start
        while pos < stop:
            end = min(stop, pos + f.chunk)
            if f.cut_at is not None and f.cuts > 0 and pos < f.cut_at <= end:
                end = f.cut_at
            if f.stall_at is not None and pos <= f.stall_at < end:
                end = f.stall_at
            piece = bytearray(body[pos:end])
            if f.flip_at is not None and pos <= f.flip_at < end:
                piece[f.flip_at - pos] ^= 0xFF
            writer.write(bytes(piece))
            await writer.drain()
            seen.sent += len(piece)
            pos = end
            if f.cut_at is not None and f.cuts > 0 and pos == f.cut_at:
                f.cuts -= 1
                writer.transport.abort()
                return
            if f.stall_at is not None and pos == f.stall_at:
                f.stall_at = None
                await asyncio.sleep(f.stall_for)  # the client must give up and reconnect
                return
            if f.delay:
                await asyncio.sleep(f.delay)

    async def _head(
        self, writer: asyncio.StreamWriter, seen: Seen, status: int, extra: str
    ) -> None:
        seen.status = status
        writer.write(f"HTTP/1.1 {status} X\r\n{extra}Connection: close\r\n\r\n".encode())
        await writer.drain()
