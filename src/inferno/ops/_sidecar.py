"""The ops port's front process: answers ``GET /health`` itself, relays everything else.

Run by :class:`inferno.ops.server.OpsServer` (``own_process=True``) as
``python _sidecar.py --host H --port P --upstream U --state FILE --parent PID``, by path,
so it imports only the standard library (and uvloop when present): a separate process
has its own GIL, so a health probe is answered in about the time nginx takes even while
the component's event loop keeps a core busy (in a thread of the same process it waited
for the GIL: p99 6-7 ms). The component writes its state and a heartbeat into ``FILE``
(see :func:`pack_state`); while that says "ready" the probe is answered here, and a
heartbeat older than ``--stale`` seconds means its event loop has stopped turning (503
``unresponsive``). Other states and other requests go to
the component's own ops server on ``127.0.0.1:U`` over kept-alive connections. The
process exits when its parent does.

Clients cannot starve it (see :class:`Limits`): a request head must arrive within a
deadline, idle keep-alive connections are closed, connections are capped (the oldest idle
one makes room first), heads are size-capped and parsed strictly (400 and close).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import mmap
import os
import re
import resource
import signal
import struct
import time
from dataclasses import dataclass

_STATE = struct.Struct("<dB55s")  # heartbeat (time.monotonic), state length, state
STATE_SIZE = _STATE.size  # 64
_MAX_BODY = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client may hold: the front process must answer /health whatever others do.

    ``head_timeout``: the whole request head must arrive within this many seconds of its
    first byte; ``body_timeout``: the body and the writing of the answer each get this
    long; ``idle_timeout``: a keep-alive connection with no request is closed after it;
    ``max_connections``: past it, a new connection closes the oldest idle one (else the
    one that has waited longest for its head; else it is refused with a 503); lowered
    to fit the process's file descriptor limit;
    ``max_head``: bytes in a request head (431 beyond).
    """

    head_timeout: float = 5.0
    body_timeout: float = 10.0
    idle_timeout: float = 15.0
    # Every node of a large pool keeps a connection for its renewals (1,000 nodes: 1,000
    # connections); one reopened per renewal costs more than the renewal.
    max_connections: int = 4096
    max_head: int = 16 * 1024

    def args(self) -> list[str]:
        return ["--head-timeout", str(self.head_timeout),
                "--body-timeout", str(self.body_timeout),
                "--idle-timeout", str(self.idle_timeout),
                "--max-connections", str(self.max_connections),
                "--max-head", str(self.max_head)]


def pack_state(heartbeat: float, state: str) -> bytes:
    raw = state.encode()[:55]
    return _STATE.pack(heartbeat, len(raw), raw)


def unpack_state(data: bytes) -> tuple[float, str]:
    heartbeat, n, raw = _STATE.unpack(data[:_STATE.size])
    return heartbeat, raw[:n].decode(errors="replace")


def _response(status: int, reason: str, body: bytes, extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\n{extra}\r\n").encode() + body


def _refusal(status: int, reason: str, text: str) -> bytes:
    return _response(status, reason, text.encode() + b"\n", "connection: close\r\n")


_UNRESPONSIVE = _response(503, "Service Unavailable", b"unresponsive\n", "retry-after: 1\r\n")
_BUSY = _response(503, "Service Unavailable", b"too many connections\n",
                  "retry-after: 1\r\nconnection: close\r\n")
_HEAD_TOO_LARGE = _refusal(431, "Request Header Fields Too Large", "request head too large")
_TOO_LARGE = _refusal(413, "Payload Too Large", "too large")
_RELAY_TIMEOUT = 30.0
_POOL = 32  # idle upstream connections kept
_SPARE_FDS = 32  # descriptors kept for the listener, relays, the state page, stdio
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_DIGITS = re.compile(r"[0-9]{1,18}")


class BadRequest(Exception):
    """A request this process refuses to read further: 400, then the connection closes."""


def parse_head(head: bytes) -> tuple[str, str, bool, list[str], dict[str, str], int]:
    """Strict: (method, target, HTTP/1.0, lines, headers, content length) or BadRequest.

    Refused: a malformed request line, header lines that are not ``name: value`` (obsolete
    line folding included), a Content-Length that is not plain digits or is given twice,
    and any Transfer-Encoding (request bodies here are small and always have a length).
    """
    lines = head[:-4].decode("latin-1").split("\r\n")
    if any("\r" in line or "\n" in line or "\0" in line for line in lines):
        raise BadRequest("stray CR, LF or NUL in the request head")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1] \
            or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest("bad request line")
    headers: dict[str, str] = {}
    lengths = 0
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise BadRequest("bad header line")
        name = name.lower()
        if name == "content-length":
            lengths += 1
        elif name == "transfer-encoding":
            raise BadRequest("transfer-encoding is not accepted here")
        value = value.strip(" \t")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    length = 0
    if lengths:
        value = headers["content-length"]
        if lengths > 1 or not _DIGITS.fullmatch(value):
            raise BadRequest("bad content-length")
        length = int(value)
    return parts[0], parts[1], parts[2] == "HTTP/1.0", lines, headers, length


class _Conn:
    __slots__ = ("transport",)

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self.transport = transport


class Sidecar:
    def __init__(self, state: mmap.mmap, upstream: int, stale: float,
                 limits: Limits | None = None) -> None:
        self._state = state
        self._upstream = upstream
        self._stale = stale
        self.limits = limits or Limits()
        self._conns: set[_Conn] = set()  # open connections (up to max_connections)
        # Those waiting, by what for, oldest first (dicts keep insertion order).
        self._idle: dict[_Conn, None] = {}     # for a request
        self._reading: dict[_Conn, None] = {}  # for the rest of a request's head
        # Idle keep-alive connections to the component's ops server.
        self._pool: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    def health(self) -> bytes | None:
        """The answer from the state page, or None: ask the component itself.

        Only "ready" is answered here. Any other state is relayed, so the page's lag (it
        is published every 50 ms) can never report a component that just became ready as
        still loading; a component that is not ready is not the saturated one anyway.
        """
        heartbeat, state = unpack_state(self._state[:STATE_SIZE])
        if time.monotonic() - heartbeat > self._stale:
            return _UNRESPONSIVE
        return _response(200, "OK", b"healthy\n") if state == "ready" else None

    def _make_room(self) -> bool:
        """Under the connection cap: close the oldest idle one, else the slowest head."""
        if len(self._conns) < self.limits.max_connections:
            return True
        for waiting in (self._idle, self._reading):
            if waiting:
                victim = next(iter(waiting))
                del waiting[victim]
                self._conns.discard(victim)
                victim.transport.abort()  # its reader sees the end and returns
                return True
        return False

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer.transport)
        if not self._make_room():
            with contextlib.suppress(Exception):
                writer.write(_BUSY)
                writer.close()
            return
        self._conns.add(conn)
        try:
            with contextlib.suppress(Exception):  # timeouts included: the connection closes
                await self._serve(conn, reader, writer)
        finally:
            self._conns.discard(conn)
            self._idle.pop(conn, None)
            self._reading.pop(conn, None)
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve(self, conn: _Conn, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        limits = self.limits
        while True:
            self._idle[conn] = None
            try:
                async with asyncio.timeout(limits.idle_timeout):
                    first = await reader.read(1)
            finally:
                self._idle.pop(conn, None)
            if not first:
                return
            self._reading[conn] = None
            try:
                async with asyncio.timeout(limits.head_timeout):
                    head = first + await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                await self._refuse(reader, writer, _HEAD_TOO_LARGE)
                return
            finally:
                self._reading.pop(conn, None)
            if len(head) > limits.max_head:
                await self._refuse(reader, writer, _HEAD_TOO_LARGE)
                return
            try:
                method, target, http10, lines, headers, length = parse_head(head)
            except BadRequest as exc:
                await self._refuse(reader, writer, _refusal(400, "Bad Request", str(exc)))
                return
            if length > _MAX_BODY:
                await self._refuse(reader, writer, _TOO_LARGE)
                return
            async with asyncio.timeout(limits.body_timeout):
                body = await reader.readexactly(length) if length else b""
            answer = None
            if method == "GET" and target.split("?", 1)[0] == "/health":
                answer = self.health()
            answer = answer or await self.relay(lines, body)
            async with asyncio.timeout(limits.body_timeout):
                writer.write(answer)
                await writer.drain()
            close = headers.get("connection", "").lower()
            if close == "close" or (http10 and close != "keep-alive"):
                return

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      answer: bytes) -> None:
        """Answer, then close; what the client still sends is read and dropped for a
        moment, so that it reads the answer rather than a reset."""
        writer.write(answer)
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()
            async with asyncio.timeout(1.0):
                while await reader.read(65536):
                    pass

    async def relay(self, lines: list[str], body: bytes) -> bytes:
        """One request to the component's ops server, its whole answer back.

        Upstream connections are kept alive and reused (up to ``_POOL`` idle ones): with a
        thousand nodes renewing their leases, a connection per relayed request cost both
        processes more than the requests themselves. A reused connection the component
        closed meanwhile is retried once on a new one (every relayed request is safe to
        send again: renewals, deregistrations and settings are idempotent)."""
        kept = [line for line in lines[1:] if line and
                line.split(":", 1)[0].strip().lower() not in ("connection", "keep-alive")]
        head_only = lines[0].startswith("HEAD ")
        close = ["connection: close"] if head_only else []
        head = "\r\n".join([lines[0], *kept, *close, "", ""]).encode("latin-1")
        for reused in (bool(self._pool), False):
            if reused:
                r, w = self._pool.pop()
            else:
                try:
                    r, w = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", self._upstream), self._stale)
                except (OSError, TimeoutError):
                    return _UNRESPONSIVE
            try:
                w.write(head + body)
                await w.drain()
                async with asyncio.timeout(_RELAY_TIMEOUT):  # a stuck component
                    resp_head, resp_body, keep = await _read_answer(r, head_only)
            except (OSError, TimeoutError, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError, ValueError) as exc:
                w.close()
                if reused and not isinstance(exc, TimeoutError):
                    continue  # closed while idle in the pool: once more on a new one
                return _UNRESPONSIVE
            if keep and len(self._pool) < _POOL:
                self._pool.append((r, w))
            else:
                w.close()
            break
        # Its connection headers were for us; the client's connection stays as it asked.
        resp_lines = [line for line in resp_head.split(b"\r\n")
                      if not line.lower().startswith((b"connection:", b"keep-alive:"))]
        if not any(line.lower().startswith(b"content-length:") for line in resp_lines[1:]):
            resp_lines.append(b"content-length: %d" % len(resp_body))
        return b"\r\n".join(resp_lines) + b"\r\n\r\n" + resp_body


async def _read_answer(r: asyncio.StreamReader, head_only: bool
                       ) -> tuple[bytes, bytes, bool]:
    """(head, body, whether the connection can carry another request) of one answer."""
    head = (await r.readuntil(b"\r\n\r\n"))[:-4]
    status_line, *header_lines = head.split(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    fields = {}
    for line in header_lines:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip().lower()
    if head_only or status in (204, 304) or 100 <= status < 200:
        return head, b"", not head_only and fields.get(b"connection") != b"close"
    length = fields.get(b"content-length")
    if length is None or b"transfer-encoding" in fields:  # to the end of the connection
        return head, await r.read(), False
    body = await r.readexactly(int(length))
    return head, body, fields.get(b"connection") != b"close"


async def _main(a: argparse.Namespace) -> None:
    fd = os.open(a.state, os.O_RDONLY)
    state = mmap.mmap(fd, STATE_SIZE, prot=mmap.PROT_READ)
    os.close(fd)
    # Never more connections than file descriptors: past the limit accept() fails and the
    # probe that matters would wait in the backlog behind idle clients.
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = a.max_connections if soft == resource.RLIM_INFINITY else \
        max(1, min(a.max_connections, soft - _SPARE_FDS))
    limits = Limits(head_timeout=a.head_timeout, body_timeout=a.body_timeout,
                    idle_timeout=a.idle_timeout, max_connections=cap, max_head=a.max_head)
    sidecar = Sidecar(state, a.upstream, a.stale, limits)
    # The reader's limit caps a request head (readuntil refuses to buffer past it).
    server = await asyncio.start_server(sidecar.serve, a.host, a.port, reuse_address=True,
                                        limit=a.max_head, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"port {port}", flush=True)
    while os.getppid() == a.parent:  # noqa: ASYNC110 - polling the parent is the point
        await asyncio.sleep(0.25)
    server.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", type=int, required=True)
    ap.add_argument("--state", required=True)
    ap.add_argument("--parent", type=int, required=True)
    ap.add_argument("--stale", type=float, default=2.0)
    d = Limits()
    ap.add_argument("--head-timeout", type=float, default=d.head_timeout)
    ap.add_argument("--body-timeout", type=float, default=d.body_timeout)
    ap.add_argument("--idle-timeout", type=float, default=d.idle_timeout)
    ap.add_argument("--max-connections", type=int, default=d.max_connections)
    ap.add_argument("--max-head", type=int, default=d.max_head)
    a = ap.parse_args()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when this ends
    try:
        import uvloop
    except ImportError:
        asyncio.run(_main(a))
    else:
        uvloop.run(_main(a))


if __name__ == "__main__":
    main()
