"""HttpServer over real sockets on 127.0.0.1: framing, limits, errors, streaming, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest

from inferno.core.errors import InfernoError, NotFound, Overloaded, RateLimited
from inferno.net import HttpClient, HttpServer, Request, Response, StreamingResponse
from inferno.net.server import Handler
from tests.polling import eventually

Serve = Callable[..., Awaitable[HttpServer]]

GENERIC_500 = {
    "error": {
        "message": "The server had an error while processing your request.",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
}


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[HttpServer] = []

    async def _serve(handler: Handler, **kw: object) -> HttpServer:
        srv = HttpServer(handler, **kw)  # type: ignore[arg-type]
        await srv.start("127.0.0.1", 0)
        servers.append(srv)
        return srv

    yield _serve
    for srv in servers:
        await srv.stop(grace=0.5)


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    c = HttpClient()
    yield c
    await c.aclose()


async def echo(req: Request) -> Response:
    return Response.json(
        {
            "method": req.method,
            "path": req.path,
            "query": req.query,
            "body": req.body.decode(),
            "x_test": req.header("X-Test"),
            "client": list(req.client) if req.client else None,
        }
    )


OpenRaw = Callable[[HttpServer], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


@pytest.fixture
async def open_raw() -> AsyncIterator[OpenRaw]:
    """Raw client sockets, all closed at teardown whatever the test did with them."""
    writers: list[asyncio.StreamWriter] = []

    async def _open(srv: HttpServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writers.append(writer)
        return reader, writer

    yield _open
    for writer in writers:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += data[:-2]
    else:
        body = await reader.read()
    return status, headers, body


async def assert_closed(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionResetError):  # a reset is a close too
        assert await asyncio.wait_for(reader.read(), 2) == b""


# ---- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "body", "path", "query"),
    [
        ("GET", "/v1/models", b"", "/v1/models", ""),
        ("GET", "/search?q=a&b=2", b"", "/search", "q=a&b=2"),
        ("POST", "/v1/chat/completions", b'{"x": 1}', "/v1/chat/completions", ""),
        ("DELETE", "/item/7", b"", "/item/7", ""),
        ("GET", "http://example.com/abs/p?x=1", b"", "/abs/p", "x=1"),
    ],
    ids=["get", "get-query", "post", "delete", "absolute-form"],
)
async def test_round_trip(
    serve: Serve,
    client: HttpClient,
    method: str,
    target: str,
    body: bytes,
    path: str,
    query: str,
) -> None:
    srv = await serve(echo)
    resp = await client.request(
        "127.0.0.1", srv.port, method, target, headers=[(b"X-Test", b"yes")], body=body
    )
    assert resp.status == 200
    assert resp.header("Content-Type") == "application/json"
    got = orjson.loads(await resp.read())
    assert got["method"] == method
    assert got["path"] == path
    assert got["query"] == query
    assert got["body"] == body.decode()
    assert got["x_test"] == "yes"
    assert got["client"][0] == "127.0.0.1"


async def test_keepalive_reuse_over_100_requests(serve: Serve, client: HttpClient) -> None:
    peers: set[tuple[str, int] | None] = set()

    async def handler(req: Request) -> Response:
        peers.add(req.client)
        return Response(body=req.body)

    srv = await serve(handler)
    for i in range(100):
        resp = await client.request("127.0.0.1", srv.port, "POST", "/", body=b"%d" % i)
        assert await resp.read() == b"%d" % i
        assert client.open_connections == 1
    assert len(peers) == 1


async def test_chunked_request_body(open_raw: OpenRaw, serve: Serve) -> None:
    srv = await serve(echo)
    reader, writer = await open_raw(srv)
    writer.write(b"POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
    await writer.drain()
    await asyncio.sleep(0.01)  # the scenario: the body arrives in two reads
    writer.write(b"6\r\n world\r\n0\r\n\r\n")
    status, _, body = await read_response(reader)
    assert status == 200
    assert orjson.loads(body)["body"] == "hello world"
    writer.close()


async def test_pipelined_requests_answered_in_order(open_raw: OpenRaw, serve: Serve) -> None:
    async def handler(req: Request) -> Response:
        # The first request is the slowest: a server answering out of order would show it.
        await asyncio.sleep({"/1": 0.05, "/2": 0.0, "/3": 0.01}[req.path])
        return Response(body=req.path.encode(), content_type="text/plain")

    srv = await serve(handler)
    reader, writer = await open_raw(srv)
    writer.write(b"".join(b"GET /%d HTTP/1.1\r\nhost: x\r\n\r\n" % i for i in (1, 2, 3)))
    bodies = [(await read_response(reader))[2] for _ in range(3)]
    assert bodies == [b"/1", b"/2", b"/3"]
    writer.close()


@pytest.mark.parametrize(
    ("request_head", "expect_keep_alive_header", "closes"),
    [
        (b"GET / HTTP/1.0\r\n\r\n", False, True),
        (b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n", True, False),
        (b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n", False, True),
    ],
    ids=["http10", "http10-keepalive", "http11-close"],
)
async def test_connection_semantics(
    open_raw: OpenRaw,
    serve: Serve,
    request_head: bytes,
    expect_keep_alive_header: bool,
    closes: bool,
) -> None:
    srv = await serve(echo)
    reader, writer = await open_raw(srv)
    writer.write(request_head)
    status, headers, _ = await read_response(reader)
    assert status == 200
    assert (headers.get("connection") == "keep-alive") == expect_keep_alive_header
    if closes:
        assert headers.get("connection") == "close"
        await assert_closed(reader)
    else:
        writer.write(request_head)
        assert (await read_response(reader))[0] == 200
    writer.close()


async def test_expect_100_continue(open_raw: OpenRaw, serve: Serve) -> None:
    srv = await serve(echo)
    reader, writer = await open_raw(srv)
    writer.write(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n")
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2) == (
        b"HTTP/1.1 100 Continue\r\n\r\n"
    )
    writer.write(b"ok")
    status, _, body = await read_response(reader)
    assert status == 200
    assert orjson.loads(body)["body"] == "ok"
    writer.close()


# ---- limits and malformed input -------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        (
            b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10000000\r\n\r\n",
            413,
            "payload_too_large",
        ),
        (
            b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
            + b"400\r\n"
            + b"a" * 1024
            + b"\r\n" * 1,
            413,
            "payload_too_large",
        ),
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nhost: x\r\n\r\n", 431, "headers_too_large"),
        (
            b"GET / HTTP/1.1\r\n" + b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 100) for i in range(60)),
            431,
            "headers_too_large",
        ),
        (b"GARBAGE\r\n\r\n", 400, "invalid_value"),
        (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", 400, "invalid_value"),
        (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n", 400, "invalid_value"),
        (
            b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            400,
            "invalid_value",
        ),
    ],
    ids=[
        "413-content-length",
        "413-chunked",
        "431-long-url",
        "431-many-headers-unterminated",
        "400-garbage",
        "400-bad-header",
        "400-bad-content-length",
        "400-bad-chunk",
    ],
)
async def test_limits_and_malformed(
    open_raw: OpenRaw, serve: Serve, payload: bytes, status: int, code: str
) -> None:
    called = False

    async def handler(req: Request) -> Response:
        nonlocal called
        called = True
        return Response()

    srv = await serve(handler, max_body_size=1000, max_header_size=4096)
    reader, writer = await open_raw(srv)
    writer.write(payload)
    got_status, headers, body = await read_response(reader)
    assert got_status == status
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    err = orjson.loads(body)["error"]
    assert err["code"] == code
    assert set(err) == {"message", "type", "param", "code"}
    await assert_closed(reader)
    assert not called
    writer.close()


async def test_413_keeps_answer_readable_while_client_still_uploads(
    open_raw: OpenRaw, serve: Serve
) -> None:
    srv = await serve(echo, max_body_size=1000)
    reader, writer = await open_raw(srv)
    writer.write(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3000000\r\n\r\n")
    # The body keeps coming after the server already decided: the answer must survive.
    for _ in range(30):
        writer.write(b"x" * 100_000)
    status, _, _ = await read_response(reader)
    assert status == 413
    writer.close()


async def test_headers_split_across_reads_still_parse(open_raw: OpenRaw, serve: Serve) -> None:
    srv = await serve(echo, max_header_size=4096)
    reader, writer = await open_raw(srv)
    for part in (b"GET /sp", b"lit HTTP/1.1\r\nhost:", b" x\r\nx-test: 1\r\n", b"\r\n"):
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(0.005)  # the scenario: each part arrives in a read of its own
    status, _, body = await read_response(reader)
    assert status == 200
    assert orjson.loads(body)["path"] == "/split"
    writer.close()


async def test_slowloris_headers_time_out(open_raw: OpenRaw, serve: Serve) -> None:
    srv = await serve(echo, header_timeout=0.2)
    reader, writer = await open_raw(srv)
    writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await assert_closed(reader)
    assert loop.time() - t0 < 1.0
    writer.close()


async def test_idle_keepalive_connection_closed(open_raw: OpenRaw, serve: Serve) -> None:
    srv = await serve(echo, keepalive_timeout=0.2)
    reader, writer = await open_raw(srv)
    writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    await assert_closed(reader)
    writer.close()


async def test_slow_handler_not_killed_by_header_timeout(serve: Serve, client: HttpClient) -> None:
    async def handler(req: Request) -> Response:
        await asyncio.sleep(0.4)
        return Response(body=b"late", content_type="text/plain")

    srv = await serve(handler, header_timeout=0.1, keepalive_timeout=0.1)
    resp = await client.request("127.0.0.1", srv.port, "GET", "/")
    assert await resp.read() == b"late"


# ---- handler errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    "err",
    [NotFound("no such thing"), RateLimited("slow down", retry_after=3), Overloaded()],
    ids=["404", "429-retry-after", "503-overloaded"],
)
async def test_handler_inferno_error(serve: Serve, client: HttpClient, err: InfernoError) -> None:
    async def handler(req: Request) -> Response:
        raise err

    srv = await serve(handler)
    resp = await client.request("127.0.0.1", srv.port, "GET", "/")
    assert resp.status == err.status_code
    assert await resp.read() == err.to_json()
    for name, value in err.headers():
        assert resp.header(name) == value
    assert resp.header("content-type") == "application/json"


async def test_handler_crash_is_generic_500(
    serve: Serve, client: HttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(req: Request) -> Response:
        raise RuntimeError("secret-internal-detail")

    srv = await serve(handler)
    with caplog.at_level(logging.ERROR, logger="inferno.net"):
        resp = await client.request("127.0.0.1", srv.port, "GET", "/")
        body = await resp.read()
    assert resp.status == 500
    assert orjson.loads(body) == GENERIC_500
    assert b"secret" not in body
    assert b"Traceback" not in body
    assert any(
        r.exc_info and "secret-internal-detail" in str(r.exc_info[1]) for r in caplog.records
    )
    # The connection survives a handler crash.
    resp = await client.request("127.0.0.1", srv.port, "GET", "/")
    assert resp.status == 500
    await resp.read()
    assert client.open_connections == 1


@pytest.mark.parametrize(
    "headers",
    [[("x-evil", "a\r\nset-cookie: x=1")], [("x-evil\r\nset-cookie", "1")], [("x", "a\nb")]],
    ids=["crlf-value", "crlf-name", "lf-value"],
)
async def test_header_injection_refused(
    serve: Serve, client: HttpClient, headers: list[tuple[str, str]]
) -> None:
    async def handler(req: Request) -> Response:
        return Response(body=b"{}", headers=headers)

    srv = await serve(handler)
    resp = await client.request("127.0.0.1", srv.port, "GET", "/")
    assert resp.status == 500
    assert resp.header("set-cookie") is None
    assert orjson.loads(await resp.read()) == GENERIC_500


async def _stray_cancel(req: Request) -> Response:
    raise asyncio.CancelledError  # not a cancel of the request task


async def _not_a_response(req: Request) -> Response:
    return "hello"  # type: ignore[return-value]


async def _str_body(req: Request) -> Response:
    return Response(body="text")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "handler",
    [_stray_cancel, _not_a_response, _str_body],
    ids=["stray-cancelled-error", "not-a-response", "str-body"],
)
async def test_misbehaving_handler_still_answers_500(
    serve: Serve, client: HttpClient, handler: Handler
) -> None:
    srv = await serve(handler)
    for _ in range(2):  # and the connection stays usable
        resp = await client.request("127.0.0.1", srv.port, "GET", "/")
        assert resp.status == 500
        assert orjson.loads(await resp.read()) == GENERIC_500
    assert client.open_connections == 1


async def test_204_has_no_body_or_length(open_raw: OpenRaw, serve: Serve) -> None:
    async def handler(req: Request) -> Response:
        return Response(204, b"ignored")

    srv = await serve(handler)
    reader, writer = await open_raw(srv)
    writer.write(b"DELETE /x HTTP/1.1\r\nhost: x\r\n\r\nGET /y HTTP/1.1\r\nhost: x\r\n\r\n")
    for _ in range(2):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert head.startswith(b"HTTP/1.1 204 No Content\r\n")
        assert b"content-length" not in head
    writer.close()


async def test_custom_response_headers_and_status(serve: Serve, client: HttpClient) -> None:
    async def handler(req: Request) -> Response:
        return Response(201, b"made", headers=[("x-request-id", "abc")], content_type="text/plain")

    srv = await serve(handler)
    resp = await client.request("127.0.0.1", srv.port, "POST", "/")
    assert resp.status == 201
    assert resp.header("X-Request-Id") == "abc"
    assert resp.header("content-type") == "text/plain"
    assert await resp.read() == b"made"


# ---- streaming ------------------------------------------------------------------------


async def test_stream_chunks_flushed_as_produced(serve: Serve, client: HttpClient) -> None:
    first_seen = asyncio.Event()

    async def gen() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        # The second chunk is only produced once the client holds the first: if the
        # server buffered, this would deadlock into the timeout below.
        await asyncio.wait_for(first_seen.wait(), 2)
        await asyncio.sleep(0.05)
        yield b""  # skipped, must not terminate the chunked body
        yield b"data: 2\n\n"

    async def handler(req: Request) -> StreamingResponse:
        return StreamingResponse(gen())

    srv = await serve(handler)
    resp = await client.request("127.0.0.1", srv.port, "GET", "/")
    assert resp.header("transfer-encoding") == "chunked"
    assert resp.header("cache-control") == "no-cache"
    assert resp.header("x-accel-buffering") == "no"
    chunks = []
    async for chunk in resp.iter_chunks(idle_timeout=2):
        chunks.append(chunk)
        first_seen.set()
    assert chunks == [b"data: 1\n\n", b"data: 2\n\n"]


@pytest.mark.parametrize("producing", [False, True], ids=["iterator-waiting", "iterator-producing"])
async def test_client_disconnect_mid_stream_closes_iterator(
    open_raw: OpenRaw, serve: Serve, producing: bool
) -> None:
    closed = asyncio.Event()
    req_seen: list[Request] = []

    async def gen() -> AsyncIterator[bytes]:
        try:
            yield b"data: first\n\n"
            while True:
                if producing:
                    await asyncio.sleep(0.01)
                    yield b"data: more\n\n"
                else:
                    await asyncio.Event().wait()
        finally:
            closed.set()

    async def handler(req: Request) -> StreamingResponse:
        req_seen.append(req)
        return StreamingResponse(gen())

    srv = await serve(handler)
    reader, writer = await open_raw(srv)
    writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"data: first\n\n"), 2)
    writer.close()
    await asyncio.wait_for(closed.wait(), 1.0)
    assert req_seen[0].disconnected.is_set()
    await eventually(lambda: srv.active_requests == 0, what="no active request")


async def test_client_disconnect_cancels_running_handler(open_raw: OpenRaw, serve: Serve) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def handler(req: Request) -> Response:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Response()

    srv = await serve(handler)
    _, writer = await open_raw(srv)
    writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    await asyncio.wait_for(started.wait(), 2)
    assert srv.active_requests == 1
    writer.close()
    await asyncio.wait_for(cancelled.wait(), 1.0)
    await eventually(lambda: srv.active_requests == 0, what="no active request")


async def test_stream_error_after_headers_truncates_visibly(
    serve: Serve, client: HttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    async def gen() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        raise RuntimeError("boom")

    async def handler(req: Request) -> StreamingResponse:
        return StreamingResponse(gen())

    srv = await serve(handler)
    resp = await client.request("127.0.0.1", srv.port, "GET", "/")
    with caplog.at_level(logging.ERROR, logger="inferno.net"), pytest.raises(InfernoError):
        async for _ in resp.iter_chunks(idle_timeout=2):
            pass


async def test_large_stream_with_slow_reader_is_complete(serve: Serve, client: HttpClient) -> None:
    block = bytes(range(256)) * 256  # 64 KiB
    n = 64  # 4 MiB: beyond both transport high-water marks and the client's 1 MiB buffer

    async def gen() -> AsyncIterator[bytes]:
        for _ in range(n):
            yield block

    async def handler(req: Request) -> StreamingResponse:
        return StreamingResponse(gen(), content_type="application/octet-stream")

    srv = await serve(handler)
    resp = await client.request("127.0.0.1", srv.port, "GET", "/")
    await asyncio.sleep(0.2)  # let the server run into back-pressure
    assert resp.header("cache-control") is None
    body = await resp.read()
    assert body == block * n


# ---- shutdown -------------------------------------------------------------------------


async def test_stop_lets_in_flight_finish_and_refuses_new(serve: Serve, client: HttpClient) -> None:
    started = asyncio.Event()

    async def handler(req: Request) -> Response:
        started.set()
        await asyncio.sleep(0.2)
        return Response(body=b"done", content_type="text/plain")

    srv = await serve(handler)
    port = srv.port
    in_flight = asyncio.create_task(client.request("127.0.0.1", port, "GET", "/"))
    await asyncio.wait_for(started.wait(), 2)
    stopping = asyncio.create_task(srv.stop(grace=5))

    async def refused() -> bool:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return True
        w.close()
        return False

    await eventually(refused, timeout=1.0, what="new connections refused while stopping")
    resp = await in_flight
    assert resp.status == 200
    assert await resp.read() == b"done"
    await asyncio.wait_for(stopping, 2)
    assert srv.active_requests == 0


async def test_stop_cancels_after_grace(
    open_raw: OpenRaw, serve: Serve, client: HttpClient
) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def handler(req: Request) -> Response:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        return Response()

    srv = await serve(handler)
    idle_reader, _ = await open_raw(srv)
    in_flight = asyncio.create_task(client.request("127.0.0.1", srv.port, "GET", "/"))
    await asyncio.wait_for(started.wait(), 2)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await srv.stop(grace=0.1)
    assert loop.time() - t0 < 1.0
    assert cancelled.is_set()
    await assert_closed(idle_reader)
    with pytest.raises(InfernoError):
        await asyncio.wait_for(in_flight, 2)
