"""HttpClient against HttpServer and hand-written raw upstreams on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest

from inferno.core.errors import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from inferno.net import HttpClient, HttpServer, Request, Response, StreamingResponse, get_json
from tests.polling import eventually

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
RawServer = Callable[[RawHandler], Awaitable[int]]
Serve = Callable[..., Awaitable[HttpServer]]

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    c = HttpClient()
    yield c
    await c.aclose()


@pytest.fixture
async def raw_server() -> AsyncIterator[RawServer]:
    """A scripted upstream: ``handler(reader, writer)`` runs once per accepted connection."""
    servers: list[asyncio.Server] = []
    tasks: set[asyncio.Task[None]] = set()

    async def _start(handler: RawHandler) -> int:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            try:
                await handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass  # the client went away: that is what several tests do
            finally:
                writer.close()

        srv = await asyncio.start_server(run, "127.0.0.1", 0)
        servers.append(srv)
        return int(srv.sockets[0].getsockname()[1])

    yield _start
    for srv in servers:
        srv.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for srv in servers:
        await srv.wait_closed()


@pytest.fixture
async def http_server() -> AsyncIterator[Callable[..., Awaitable[HttpServer]]]:
    servers: list[HttpServer] = []

    async def _start(handler: object, **kw: object) -> HttpServer:
        srv = HttpServer(handler, **kw)  # type: ignore[arg-type]
        await srv.start("127.0.0.1", 0)
        servers.append(srv)
        return srv

    yield _start
    for srv in servers:
        await srv.stop(grace=0.5)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rst_close(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# ---- connection errors ----------------------------------------------------------------


async def test_refused_connection(client: HttpClient) -> None:
    with pytest.raises(UpstreamConnectError):
        await client.request("127.0.0.1", free_port(), "GET", "/", connect_timeout=1)
    assert client.open_connections == 0


async def test_closed_before_any_byte_on_fresh_connection(
    raw_server: RawServer, client: HttpClient
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()

    port = await raw_server(handler)
    with pytest.raises(UpstreamConnectError):
        await client.request("127.0.0.1", port, "GET", "/")


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"garbage\r\n\r\n", UpstreamProtocolError),
        (b"HTTP/1.1 200 OK\r\ncontent-le", UpstreamProtocolError),  # closed mid-headers
        (b"HTTP/1.1 200 OK\r\nbad header line\r\n\r\n", UpstreamProtocolError),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n",
            UpstreamProtocolError,
        ),
    ],
    ids=["garbage", "truncated-headers", "bad-header", "unexpected-upgrade"],
)
async def test_bad_response_head(
    raw_server: RawServer, client: HttpClient, answer: bytes, error: type
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()
        writer.close()

    port = await raw_server(handler)
    with pytest.raises(error):
        await client.request("127.0.0.1", port, "GET", "/")
    await eventually(lambda: client.open_connections == 0, what="the socket closed")


async def test_header_timeout(raw_server: RawServer, client: HttpClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    port = await raw_server(handler)
    with pytest.raises(UpstreamTimeout):
        await client.request("127.0.0.1", port, "GET", "/", header_timeout=0.1)


# ---- bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "how"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789", "fin"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789", "rst"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\n0123456789\r\n", "fin"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n14\r\n0123456789", "rst"),
    ],
    ids=["length-fin", "length-rst", "chunked-fin", "chunked-rst-mid-chunk"],
)
@pytest.mark.parametrize("reader_kind", ["read", "iter_chunks"])
async def test_reset_mid_body_is_an_error_not_truncation(
    raw_server: RawServer, client: HttpClient, answer: bytes, how: str, reader_kind: str
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()
        await asyncio.sleep(0.02)  # the scenario: part of the body, a pause, then the cut
        if how == "rst":
            rst_close(writer)
        else:
            writer.close()

    port = await raw_server(handler)
    resp = await client.request("127.0.0.1", port, "GET", "/")
    assert resp.status == 200
    got = b""
    with pytest.raises((UpstreamProtocolError, UpstreamConnectError)):
        if reader_kind == "read":
            await resp.read()
        else:
            async for chunk in resp.iter_chunks(idle_timeout=2):
                got += chunk
    assert got in (b"", b"0123456789")


async def test_close_delimited_body(raw_server: RawServer, client: HttpClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end")
        await writer.drain()
        writer.close()

    port = await raw_server(handler)
    resp = await client.request("127.0.0.1", port, "GET", "/")
    assert await resp.read() == b"until the end"


async def test_informational_response_skipped(raw_server: RawServer, client: HttpClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + OK)
        await writer.drain()

    port = await raw_server(handler)
    resp = await client.request("127.0.0.1", port, "GET", "/")
    assert resp.status == 200
    assert resp.header("link") is None
    assert await resp.read() == b"ok"


async def test_head_request_has_no_body(http_server: Serve, client: HttpClient) -> None:
    async def handler(req: Request) -> Response:
        return Response(body=b"x" * 10)

    srv = await http_server(handler)
    resp = await client.request("127.0.0.1", srv.port, "HEAD", "/")
    assert resp.header("content-length") == "10"
    assert await asyncio.wait_for(resp.read(), 1) == b""


async def test_idle_timeout_between_chunks(http_server: Serve, client: HttpClient) -> None:
    async def gen() -> AsyncIterator[bytes]:
        yield b"one"
        await asyncio.sleep(5)
        yield b"two"

    async def handler(req: Request) -> StreamingResponse:
        return StreamingResponse(gen())

    srv = await http_server(handler)
    resp = await client.request("127.0.0.1", srv.port, "GET", "/")
    got = []
    with pytest.raises(UpstreamTimeout):
        async for chunk in resp.iter_chunks(idle_timeout=0.1):
            got.append(chunk)
    assert got == [b"one"]
    await eventually(lambda: client.open_connections == 0, what="the socket closed")


# ---- pooling --------------------------------------------------------------------------


async def test_stale_pooled_connection_closed_while_idle(
    raw_server: RawServer, client: HttpClient
) -> None:
    served: list[int] = []  # requests answered, per accepted connection

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = len(served)
        served.append(0)
        await read_request(reader)
        served[conn] += 1
        writer.write(OK)  # a keep-alive answer ...
        await writer.drain()
        if conn == 0:
            return  # ... then the server closes the idle connection (its keep-alive timeout)
        while True:
            await read_request(reader)
            served[conn] += 1
            writer.write(OK)
            await writer.drain()

    port = await raw_server(handler)
    assert await (await client.request("127.0.0.1", port, "GET", "/")).read() == b"ok"
    assert client.open_connections == 1  # pooled for reuse
    # The client notices the server's close while the socket sits idle ...
    await eventually(
        lambda: client.open_connections == 0,
        what="the client to drop the idle socket the server closed",
    )
    # ... so the next request opens a new connection instead of writing into the dead one.
    assert await (await client.request("127.0.0.1", port, "GET", "/")).read() == b"ok"
    assert served == [1, 1]
    assert client.open_connections == 1


async def test_stale_pooled_connection_race_retried_once(
    raw_server: RawServer, client: HttpClient
) -> None:
    accepted = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        if accepted == 1:
            await read_request(reader)
            writer.write(OK)  # keep-alive answer ...
            await writer.drain()
            await read_request(reader)
            writer.close()  # ... then the server drops the socket as the next request lands
        else:
            while True:
                await read_request(reader)
                writer.write(OK)
                await writer.drain()

    port = await raw_server(handler)
    assert await (await client.request("127.0.0.1", port, "POST", "/", body=b"1")).read() == b"ok"
    resp = await client.request("127.0.0.1", port, "POST", "/", body=b"2")
    assert await resp.read() == b"ok"
    assert accepted == 2


async def test_close_mid_body_closes_socket_and_complete_body_is_pooled(
    http_server: Serve, client: HttpClient
) -> None:
    closed = asyncio.Event()

    async def gen() -> AsyncIterator[bytes]:
        try:
            yield b"first"
            await asyncio.Event().wait()
        finally:
            closed.set()

    async def handler(req: Request) -> Response | StreamingResponse:
        return StreamingResponse(gen()) if req.path == "/stream" else Response(body=b"done")

    srv = await http_server(handler)
    async with await client.request("127.0.0.1", srv.port, "GET", "/") as resp:
        assert await resp.read() == b"done"
    assert client.open_connections == 1  # pooled
    resp = await client.request("127.0.0.1", srv.port, "GET", "/stream")
    async for chunk in resp.iter_chunks():
        assert chunk == b"first"
        break
    resp.close()
    await asyncio.wait_for(closed.wait(), 1.0)  # the upstream generation was aborted
    await eventually(lambda: client.open_connections == 0, what="the socket closed")


async def test_cancelled_reader_closes_socket(http_server: Serve, client: HttpClient) -> None:
    closed = asyncio.Event()
    first = asyncio.Event()

    async def gen() -> AsyncIterator[bytes]:
        try:
            yield b"first"
            await asyncio.Event().wait()
        finally:
            closed.set()

    async def handler(req: Request) -> StreamingResponse:
        return StreamingResponse(gen())

    srv = await http_server(handler)

    async def consume() -> None:
        resp = await client.request("127.0.0.1", srv.port, "GET", "/")
        async for _ in resp.iter_chunks():
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(closed.wait(), 1.0)
    await eventually(lambda: client.open_connections == 0, what="the socket closed")


async def test_cancelled_while_awaiting_headers_closes_socket(
    http_server: Serve, client: HttpClient
) -> None:
    cancelled = asyncio.Event()
    arrived = asyncio.Event()

    async def handler(req: Request) -> Response:
        arrived.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        return Response()

    srv = await http_server(handler)
    task = asyncio.create_task(client.request("127.0.0.1", srv.port, "GET", "/"))
    await eventually(arrived.is_set, what="the request to reach the server")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(cancelled.wait(), 1.0)


@pytest.mark.parametrize(
    ("max_idle", "idle_ttl", "wait", "expected_open"),
    [(1, 30.0, 0.0, 1), (8, 30.0, 0.0, 3), (8, 0.1, 0.4, 0)],
    ids=["max-idle-1", "max-idle-8", "idle-ttl-expiry"],
)
async def test_pool_limits(
    http_server: Serve, max_idle: int, idle_ttl: float, wait: float, expected_open: int
) -> None:
    async def handler(req: Request) -> Response:
        await asyncio.sleep(0.05)  # overlap the three requests: three sockets
        return Response(body=b"ok")

    srv = await http_server(handler)
    client = HttpClient(max_idle_per_host=max_idle, idle_ttl=idle_ttl)
    try:
        resps = await asyncio.gather(
            *(client.request("127.0.0.1", srv.port, "GET", "/") for _ in range(3))
        )
        for resp in resps:
            assert await resp.read() == b"ok"
        # Sockets beyond max_idle close at once; with idle-ttl-expiry the sweeper closes the rest.
        await eventually(
            lambda: client.open_connections == expected_open,
            timeout=wait + 2,
            what=f"{expected_open} pooled connections",
        )
    finally:
        await client.aclose()
    assert client.open_connections == 0


async def test_request_headers_host_and_length_are_ours(
    http_server: Serve, client: HttpClient
) -> None:
    async def handler(req: Request) -> Response:
        return Response.json([[k.decode(), v.decode()] for k, v in req.headers])

    srv = await http_server(handler)
    resp = await client.request(
        "127.0.0.1",
        srv.port,
        "POST",
        "/",
        headers=[(b"Host", b"evil"), (b"Content-Length", b"999"), (b"x-a", b"1")],
        body=b"abc",
    )
    got = orjson.loads(await resp.read())
    assert got == [["host", f"127.0.0.1:{srv.port}"], ["content-length", "3"], ["x-a", "1"]]


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("GET", "/a b", []),
        ("GET", "/a\r\nx: y", []),
        ("GET", "/", [(b"x", b"a\r\nb: c")]),
        ("GET", "/", [(b"x: y", b"1")]),
        ("G T", "/", []),
    ],
    ids=["space-target", "crlf-target", "crlf-value", "colon-name", "bad-method"],
)
async def test_injection_refused(
    client: HttpClient, method: str, target: str, headers: list[tuple[bytes, bytes]]
) -> None:
    with pytest.raises(ValueError):
        await client.request("127.0.0.1", 1, method, target, headers=headers)


async def _ok(req: Request) -> Response:
    return Response(body=b"ok", content_type="text/plain")


async def test_get_json_answers_the_document_or_none(
    http_server: Serve, raw_server: RawServer, client: HttpClient
) -> None:
    async def handler(req: Request) -> Response:
        if req.path == "/doc":
            return Response.json({"nodes": [1, 2]})
        if req.path == "/text":
            return Response(200, b"not json")
        return Response(404, b"{}")

    srv = await http_server(handler)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    slow = await raw_server(silent)
    assert await get_json(client, "127.0.0.1", srv.port, "/doc", within=1.0) == {"nodes": [1, 2]}
    for port, target in (
        (srv.port, "/text"),
        (srv.port, "/missing"),
        (free_port(), "/doc"),
        (slow, "/doc"),
    ):
        assert await get_json(client, "127.0.0.1", port, target, within=0.2) is None


async def test_endless_response_head_is_refused(raw_server: RawServer) -> None:
    sent = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(100):  # 100 x 1 KiB header lines, and never an end of the head
            writer.write(b"x-filler-%d: %s\r\n" % (i, b"a" * 1000))
            sent += 1
            await writer.drain()
        await asyncio.sleep(30)  # scenario: the head never ends

    port = await raw_server(handler)
    c = HttpClient(max_head_size=16 * 1024)
    try:
        with pytest.raises(UpstreamProtocolError, match="headers too large"):
            await c.request("127.0.0.1", port, "GET", "/", header_timeout=10)
        assert sent > 16, "the upstream never sent more than the cap"
    finally:
        await c.aclose()


async def test_oversize_body_read_whole_is_refused(raw_server: RawServer) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b"x" * 100_000)
        await writer.drain()

    port = await raw_server(handler)
    c = HttpClient(max_body_size=10_000)
    try:
        resp = await c.request("127.0.0.1", port, "GET", "/")
        assert resp.status == 200
        with pytest.raises(UpstreamProtocolError, match="body too large"):
            await resp.read()
        await eventually(lambda: c.open_connections == 0, what="the half-read socket closed")
    finally:
        await c.aclose()
