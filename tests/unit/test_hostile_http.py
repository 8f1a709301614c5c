"""Hostile input at the socket level: framing attacks, smuggling, trailers, path tricks.

Written against behaviour, not the HTTP server's internals (it is being replaced): a real
in-process proxy (auth on) with a fake node and a recording node behind it, spoken to
with raw sockets. For every hostile input the proxy must answer a clean 4xx with an
OpenAI error body or close the connection; never a 5xx, a hang, an unauthenticated
request served, or a second (smuggled) request answered.

Resource and liveness cases (slowloris, a stalled reader, HEAD/OPTIONS, pipelining, slow
uploads, caps) are in ``test_hostile_http_liveness.py``, which reuses the helpers here.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from inferno.api.node import Registration
from inferno.backend.node import BackendNode
from inferno.proxy.gateway import Gateway
from inferno.proxy.security.keys import create_key
from tests.conftest import start_fake_node, start_gateway

pytestmark = pytest.mark.asyncio(loop_scope="module")

HOST = "127.0.0.1"
MAX_BODY = 4 * 1024 * 1024  # the proxy's max_body_size in these tests (its default)


# ---- raw-socket helpers ------------------------------------------------------------------
class ProtocolViolation(AssertionError):
    """The bytes on the wire are not a valid HTTP/1.1 response stream."""


@dataclass
class HttpResp:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    head: bytes = b""

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    @property
    def closes(self) -> bool:
        return "close" in (self.header("connection") or "").lower()

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<{self.status} {self.head[:300]!r} body={self.body[:300]!r}>"


class RawConn:
    """One client TCP connection driven with the loop's sock_* calls (never blocking it:
    the proxy runs on the same event loop). Every read has a deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.eof = False
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def open(cls, port: int, *, rcvbuf: int | None = None) -> RawConn:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (HOST, port)), 3)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def close(self) -> None:
        self.sock.close()

    async def send(self, data: bytes, within: float = 10.0) -> bool:
        """Send everything; False when the peer closed or reset the connection first."""
        try:
            await asyncio.wait_for(self.loop.sock_sendall(self.sock, data), within)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            return False
        return True

    async def _fill(self, deadline: float) -> bool:
        """Read more bytes into buf; False at EOF (a reset counts as EOF)."""
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        try:
            data = await asyncio.wait_for(self.loop.sock_recv(self.sock, 65536), remaining)
        except (ConnectionResetError, ConnectionAbortedError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    async def _need(self, n: int, deadline: float) -> None:
        while len(self.buf) < n:
            if not await self._fill(deadline):
                raise ProtocolViolation(f"closed mid-body: have {len(self.buf)} of {n} bytes")

    async def _line(self, deadline: float) -> bytes:
        while (i := self.buf.find(b"\r\n")) < 0:
            if not await self._fill(deadline):
                raise ProtocolViolation(f"closed mid-line: {bytes(self.buf[:200])!r}")
        line = bytes(self.buf[:i])
        del self.buf[: i + 2]
        return line

    async def read_response(
        self,
        within: float = 3.0,
        *,
        head_only: bool = False,
    ) -> HttpResp | None:
        """One full response with its framing (1xx skipped); None when the connection
        closed before any byte of it. ``head_only``: the answer to a HEAD request."""
        deadline = time.monotonic() + within
        while True:
            while (i := self.buf.find(b"\r\n\r\n")) < 0:
                if not await self._fill(deadline):
                    if not self.buf:
                        return None
                    raise ProtocolViolation(f"closed mid-head: {bytes(self.buf[:300])!r}")
            head = bytes(self.buf[:i])
            del self.buf[: i + 4]
            lines = head.split(b"\r\n")
            m = re.fullmatch(rb"HTTP/1\.[01] (\d{3})(?: .*)?", lines[0])
            if m is None:
                raise ProtocolViolation(f"not a status line: {head[:300]!r}")
            status = int(m.group(1))
            if 100 <= status < 200:
                continue
            headers = []
            for line in lines[1:]:
                name, sep, value = line.partition(b":")
                if not sep or not name or name != name.strip():
                    raise ProtocolViolation(f"bad header line {line!r}")
                headers.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))
            resp = HttpResp(status, headers, b"", head)
            break
        te = (resp.header("transfer-encoding") or "").lower()
        cl = resp.header("content-length")
        if head_only or status in (204, 304):
            return resp
        if te == "chunked":
            body = bytearray()
            while True:
                size_line = await self._line(deadline)
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while await self._line(deadline):  # trailers up to the empty line
                        pass
                    break
                await self._need(size + 2, deadline)
                body += self.buf[:size]
                if self.buf[size : size + 2] != b"\r\n":
                    raise ProtocolViolation("chunk not followed by CRLF")
                del self.buf[: size + 2]
            resp.body = bytes(body)
        elif cl is not None:
            n = int(cl)
            await self._need(n, deadline)
            resp.body = bytes(self.buf[:n])
            del self.buf[:n]
        else:  # close-delimited
            while await self._fill(deadline):
                pass
            resp.body = bytes(self.buf)
            self.buf.clear()
        return resp

    async def read_until_closed(self, within: float = 3.0) -> bytes:
        """Wait for EOF; return the bytes that came first. AssertionError if it never comes."""
        deadline = time.monotonic() + within
        try:
            while await self._fill(deadline):
                pass
        except TimeoutError:
            raise AssertionError(
                f"connection still open after {within:g} s (unread: {bytes(self.buf[:200])!r})"
            ) from None
        data = bytes(self.buf)
        self.buf.clear()
        return data

    async def read_all(self, within: float = 2.0) -> list[HttpResp]:
        """Every response until EOF, or until ``within`` passes with the connection idle."""
        out: list[HttpResp] = []
        while True:
            try:
                resp = await self.read_response(within)
            except TimeoutError:
                if self.buf:
                    raise ProtocolViolation(
                        f"partial response: {bytes(self.buf[:200])!r}"
                    ) from None
                return out
            if resp is None:
                return out
            out.append(resp)


def assert_openai_error(resp: HttpResp) -> dict[str, Any]:
    try:
        err = resp.json()["error"]
    except (ValueError, KeyError, TypeError):
        raise AssertionError(f"not an OpenAI error body: {resp!r}") from None
    assert isinstance(err, dict) and {"message", "type", "param", "code"} <= err.keys(), resp
    assert isinstance(err["message"], str) and err["message"], resp
    return err


async def assert_rejected(
    conn: RawConn,
    within: float = 3.0,
    statuses: tuple[int, ...] = (),
) -> HttpResp | None:
    """The input was refused: at most one clean 4xx (OpenAI error body), then a close,
    and nothing else on the wire. Returns the 4xx, or None for a bare close."""
    try:
        resp = await conn.read_response(within)
    except TimeoutError:
        raise AssertionError(f"no answer and no close within {within:g} s (hang)") from None
    if resp is not None:
        assert 400 <= resp.status < 500, f"expected a 4xx or a close, got {resp!r}"
        if statuses:
            assert resp.status in statuses, f"expected one of {statuses}, got {resp!r}"
        assert_openai_error(resp)
    extra = await conn.read_until_closed(within)
    assert not extra, f"bytes after the rejection: {extra[:300]!r}"
    return resp


def request(
    method: str,
    target: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    host: str | None = "x",
    version: str = "1.1",
) -> bytes:
    lines = [f"{method} {target} HTTP/{version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body and not any(
        k.lower() in ("content-length", "transfer-encoding") for k in headers or {}
    ):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chat_body(model: str = "fake-model", max_tokens: int = 2, stream: bool = False) -> bytes:
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": max_tokens,
            "stream": stream,
        }
    ).encode()


def is_model_list(resp: HttpResp) -> bool:
    try:
        return resp.status == 200 and resp.json().get("object") == "list"
    except ValueError:
        return False


# ---- a node that records what reaches it -------------------------------------------------
_REPLY = json.dumps(
    {
        "id": "chatcmpl-rec",
        "object": "chat.completion",
        "created": 0,
        "model": "rec-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()


class RecordingNode:
    """A minimal inference node: answers every request with a fixed chat completion and
    keeps every request head it received."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> RecordingNode:
        self.server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                self.heads.append(head)
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if m:
                    await reader.readexactly(int(m.group(1)))
                elif re.search(rb"(?im)^transfer-encoding:\s*chunked", head):
                    await reader.readuntil(b"0\r\n\r\n")
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%b" % (len(_REPLY), _REPLY)
                )
                await writer.drain()
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
            TimeoutError,
        ):
            pass
        finally:
            writer.close()


# ---- the proxy under attack --------------------------------------------------------------
@dataclass
class Env:
    gw: Gateway
    node: BackendNode
    rec: RecordingNode
    key: str
    admin_key: str
    api: int = 0
    ops: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def outstanding(self, node_id: str = "n") -> int:
        node = self.gw.pool.get(node_id)
        return node.outstanding if node is not None else 0


async def make_env(data_dir: Path, **overrides: Any) -> Env:
    settings: dict[str, Any] = {
        "auth": "on",
        "stream_idle_timeout": 1.0,
        "health_interval": 600,
        "response_timeout": 10,
        "max_body_size": MAX_BODY,
        **overrides,
    }
    gw = await start_gateway(data_dir, **settings)
    node = await start_fake_node(n_ctx=1_048_576, parallel=4)
    rec = await RecordingNode().start()
    gw.pool.upsert(
        Registration(
            id="n",
            address=f"{HOST}:{node.server.port}",
            metrics_port=node.ops.port,
            models=["fake-model"],
            capacity=4,
            lease_seconds=3600,
        )
    )
    gw.pool.upsert(
        Registration(
            id="rec",
            address=f"{HOST}:{rec.port}",
            metrics_port=1,
            models=["rec-model"],
            capacity=4,
            lease_seconds=3600,
        )
    )
    store = gw.security.store
    assert store is not None
    key, _ = await create_key(store, name="user", scope="user")
    admin_key, _ = await create_key(store, name="admin", scope="admin")
    await gw.security.keys.refresh()
    return Env(gw, node, rec, key, admin_key, gw.server.port, gw.ops.port)


async def close_env(env: Env) -> None:
    await env.rec.stop()
    await env.node.drain()
    await env.gw.drain()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    e = await make_env(tmp_path_factory.mktemp("hostile"))
    yield e
    await close_env(e)


@pytest_asyncio.fixture(loop_scope="module")
async def conn(env: Env) -> AsyncIterator[RawConn]:
    c = await RawConn.open(env.api)
    yield c
    c.close()


# ---- sanity: the helpers read a normal exchange ------------------------------------------
async def test_baseline_keepalive_exchange(env: Env, conn: RawConn) -> None:
    assert await conn.send(request("GET", "/v1/models", headers=env.auth()))
    first = await conn.read_response()
    assert first is not None and is_model_list(first), first
    assert await conn.send(
        request("POST", "/v1/chat/completions", headers=env.auth(), body=chat_body())
    )
    second = await conn.read_response()
    assert second is not None and second.status == 200, second
    assert await conn.send(request("GET", "/v1/models"))
    third = await conn.read_response()
    assert third is not None and third.status == 401, third
    assert_openai_error(third)


# ---- framing -----------------------------------------------------------------------------
_POST = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
FRAMING = {
    "cl-and-te-chunked": _POST + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-chunked-and-cl": _POST + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "two-different-cl": _POST + "Content-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef",
    "cl-list": _POST + "Content-Length: 5, 6\r\n\r\nabcdef",
    "cl-plus-sign": _POST + "Content-Length: +5\r\n\r\nabcde",
    "cl-minus-sign": _POST + "Content-Length: -5\r\n\r\nabcde",
    "cl-inner-space": _POST + "Content-Length: 1 0\r\n\r\nabcdefghij",
    "cl-underscore": _POST + "Content-Length: 1_0\r\n\r\nabcdefghij",
    "cl-hex": _POST + "Content-Length: 0x5\r\n\r\nabcde",
    "cl-non-digits": _POST + "Content-Length: five\r\n\r\nabcde",
    "cl-overflow": _POST + "Content-Length: 99999999999999999999999999\r\n\r\nabc",
    "chunk-size-non-hex": _POST + "Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk-size-negative": _POST + "Transfer-Encoding: chunked\r\n\r\n-5\r\nabcde\r\n0\r\n\r\n",
    "chunk-size-overflow": _POST + "Transfer-Encoding: chunked\r\n\r\n"
    "ffffffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
    "chunk-size-0x": _POST + "Transfer-Encoding: chunked\r\n\r\n0x5\r\nabcde\r\n0\r\n\r\n",
    "chunk-data-too-long": _POST + "Transfer-Encoding: chunked\r\n\r\n2\r\nabcdef\r\n0\r\n\r\n",
    "chunk-ext-huge": _POST + "Transfer-Encoding: chunked\r\n\r\n"
    "1;" + "a=b;" * 50_000 + "\r\nx\r\n0\r\n\r\n",
    "chunk-ext-bare-cr": _POST + "Transfer-Encoding: chunked\r\n\r\n1;a\rb\r\nx\r\n0\r\n\r\n",
    "te-gzip-chunked-order": _POST + "Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "te-unknown": _POST + "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "obs-fold-space": _POST + "Content-Type: application/json\r\n folded: yes\r\n"
    "Content-Length: 2\r\n\r\n{}",
    "obs-fold-tab": _POST + "X-A: 1\r\n\tX-B: 2\r\nContent-Length: 2\r\n\r\n{}",
    "fold-before-te": _POST + "X-A: 1\r\n Transfer-Encoding: chunked\r\n"
    "Content-Length: 2\r\n\r\n{}",
    "nul-in-name": _POST + "X-A\x00b: 1\r\nContent-Length: 2\r\n\r\n{}",
    "nul-in-value": _POST + "X-A: a\x00b\r\nContent-Length: 2\r\n\r\n{}",
    "bare-cr-in-value": _POST + "X-A: a\rb\r\nContent-Length: 2\r\n\r\n{}",
    "bare-cr-in-name": _POST + "X-\rA: a\r\nContent-Length: 2\r\n\r\n{}",
    "bare-lf-in-value": _POST + "X-A: a\nContent-Length: 999\r\nContent-Length: 2\r\n\r\n{}",
    "bare-lf-in-name": _POST + "X-\nA: a\r\nContent-Length: 2\r\n\r\n{}",
    "space-before-colon": _POST + "Content-Length : 2\r\n\r\n{}",
    "te-space-before-colon": _POST + "Transfer-Encoding : chunked\r\nContent-Length: 2\r\n\r\n{}",
    "no-colon": _POST + "NoColonHere\r\nContent-Length: 2\r\n\r\n{}",
    "bad-version": "GET /v1/models HTTP/1.7\r\nHost: x\r\n\r\n",
    "bad-method-chars": "G(T /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
    "space-in-target": "GET /v1/mo dels HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("raw", list(FRAMING.values()), ids=list(FRAMING))
async def test_malformed_framing_is_refused(env: Env, conn: RawConn, raw: str) -> None:
    assert await conn.send(raw.encode("latin-1"))
    await assert_rejected(conn)


@pytest.mark.parametrize("raw", list(FRAMING.values()), ids=list(FRAMING))
async def test_nothing_is_answered_after_a_malformed_request(
    env: Env, conn: RawConn, raw: str
) -> None:
    """A malformed request then a valid one (with a key) in the same write: the second
    must not be answered; the connection closes after the refusal."""
    follow = request("GET", "/v1/models", headers=env.auth())
    assert await conn.send(raw.encode("latin-1") + follow)
    responses = await conn.read_all(within=3)
    assert not any(is_model_list(r) for r in responses), responses
    assert len(responses) <= 1, responses
    assert all(400 <= r.status < 500 for r in responses), responses
    assert conn.eof, "connection left open after a malformed request"


async def test_very_long_request_line(env: Env, conn: RawConn) -> None:
    ok = await conn.send(b"GET /v1/models?" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert ok or conn.eof
    resp = await assert_rejected(conn)
    assert resp is None or resp.status in (400, 414, 431), resp


async def test_very_many_headers(env: Env, conn: RawConn) -> None:
    headers = "".join(f"X-H{i}: v\r\n" for i in range(10_000))
    ok = await conn.send(f"GET /v1/models HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
    assert ok or conn.eof
    resp = await assert_rejected(conn)
    assert resp is None or resp.status in (400, 431), resp


async def test_body_over_limit_by_length_is_413_before_the_body(env: Env, conn: RawConn) -> None:
    head = request(
        "POST",
        "/v1/chat/completions",
        headers={
            **env.auth(),
            "Content-Type": "application/json",
            "Content-Length": str(MAX_BODY + 1),
        },
    )
    assert await conn.send(head)
    resp = await assert_rejected(conn, within=2, statuses=(413,))
    assert resp is not None, "expected a 413, got a bare close"


async def test_chunked_body_over_limit_is_refused(env: Env, conn: RawConn) -> None:
    assert await conn.send(
        request(
            "POST", "/v1/chat/completions", headers={**env.auth(), "Transfer-Encoding": "chunked"}
        )
    )
    chunk = b"%x\r\n%b\r\n" % (256 * 1024, b"a" * 256 * 1024)
    sent = 0
    deadline = time.monotonic() + 10
    while sent <= MAX_BODY + len(chunk) and time.monotonic() < deadline:
        if not await conn.send(chunk, within=2):
            break
        sent += len(chunk)
    resp = await assert_rejected(conn, within=3)
    assert resp is None or resp.status == 413, resp


# ---- smuggling ---------------------------------------------------------------------------
def _smuggled(key: str) -> str:
    return f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n"


def _cl_te(key: str, te: str = "chunked") -> bytes:
    body = "0\r\n\r\n" + _smuggled(key)
    return (
        f"{_POST}Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n"
        f"Transfer-Encoding: {te}\r\n\r\n{body}"
    ).encode()


def _te_cl(key: str, te: str = "chunked") -> bytes:
    inner = _smuggled(key)
    body = f"{len(inner):x}\r\n{inner}\r\n0\r\n\r\n"
    return (
        f"{_POST}Authorization: Bearer {key}\r\nContent-Length: {len(f'{len(inner):x}') + 2}"
        f"\r\nTransfer-Encoding: {te}\r\n\r\n{body}"
    ).encode()


SMUGGLING = {
    "cl-te": lambda k: _cl_te(k),
    "te-cl": lambda k: _te_cl(k),
    "cl-te-xchunked": lambda k: _cl_te(k, "xchunked"),
    "te-cl-chunked-identity": lambda k: _te_cl(k, "chunked, identity"),
    "te-cl-tab": lambda k: _te_cl(k, "\tchunked"),
    "te-cl-uppercase": lambda k: _te_cl(k, "CHUNKED"),
    "te-te-duplicate": lambda k: _te_cl(k, "chunked\r\nTransfer-Encoding: identity"),
}


@pytest.mark.parametrize("payload", list(SMUGGLING.values()), ids=list(SMUGGLING))
async def test_smuggled_request_is_never_answered(env: Env, conn: RawConn, payload: Any) -> None:
    assert await conn.send(payload(env.key))
    responses = await conn.read_all(within=3)
    assert len(responses) <= 1, f"more than one response: {responses}"
    assert not any(is_model_list(r) for r in responses), f"smuggled GET answered: {responses}"
    assert all(r.status < 500 for r in responses), responses


# ---- trailers ----------------------------------------------------------------------------
def _chunked_with_trailer(headers: dict[str, str], body: bytes, trailer: str) -> bytes:
    head = request(
        "POST",
        "/v1/chat/completions",
        headers={**headers, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    )
    return head + b"%x\r\n%b\r\n0\r\n%b\r\n\r\n" % (len(body), body, trailer.encode())


async def test_authorization_trailer_does_not_authenticate(env: Env, conn: RawConn) -> None:
    assert await conn.send(
        _chunked_with_trailer({}, chat_body(), f"Authorization: Bearer {env.key}")
    )
    resp = await conn.read_response()
    assert resp is not None and resp.status == 401, f"trailer authenticated: {resp!r}"
    assert_openai_error(resp)


async def test_request_id_trailer_never_reaches_the_node(env: Env, conn: RawConn) -> None:
    before = len(env.rec.heads)
    assert await conn.send(
        _chunked_with_trailer(env.auth(), chat_body("rec-model"), "X-Request-Id: evil")
    )
    resp = await conn.read_response()
    assert resp is not None and resp.status < 500, resp
    assert resp.header("x-request-id") != "evil", resp
    if resp.status == 200:
        seen = b"".join(env.rec.heads[before:])
        assert seen, "the request was answered but never reached the node"
        assert b"evil" not in seen, f"trailer forwarded to the node: {seen!r}"


# ---- Host and request-target -------------------------------------------------------------
async def test_http10_without_host(env: Env, conn: RawConn) -> None:
    assert await conn.send(
        request("GET", "/v1/models", headers=env.auth(), host=None, version="1.0")
    )
    resp = await conn.read_response()
    assert resp is None or resp.status == 200 or resp.status == 400, resp


async def test_http11_without_host_is_400(env: Env, conn: RawConn) -> None:
    assert await conn.send(request("GET", "/v1/models", headers=env.auth(), host=None))
    await assert_rejected(conn, statuses=(400,))


async def test_absolute_form_target_is_never_proxied_elsewhere(env: Env, conn: RawConn) -> None:
    elsewhere = await RecordingNode().start()
    try:
        target = f"http://{HOST}:{elsewhere.port}/v1/chat/completions"
        assert await conn.send(
            request(
                "POST",
                target,
                headers=env.auth(),
                body=chat_body(),
                host=f"{HOST}:{elsewhere.port}",
            )
        )
        resp = await conn.read_response()
        assert resp is not None and resp.status in (200, 400), resp
        if resp.status == 400:
            assert_openai_error(resp)
        else:
            assert resp.header("x-inferno-backend") == "n", resp  # served as the path
        assert elsewhere.connections == 0 and not elsewhere.heads
    finally:
        await elsewhere.stop()


# ---- path tricks against auth ------------------------------------------------------------
PATH_TRICKS = [
    ("POST", "//v1/chat/completions"),
    ("POST", "/v1/./chat/completions"),
    ("POST", "/v1/chat/completions/"),
    ("POST", "/v1//chat/completions"),
    ("POST", "/v1/chat/completions/."),
    ("POST", "/v1/%63hat/completions"),
    ("POST", "/v1/chat/completions;x"),
    ("POST", "/v1/chat/completions%00"),
    ("GET", "//v1/models"),
    ("GET", "/v1/%2e/models"),
    ("GET", "/v1%2Fmodels"),
    ("GET", "/V1/MODELS"),
    ("GET", "/v1/models/../models"),
    ("GET", "/v1/models/"),
    ("GET", "/v1/models/./"),
    ("GET", "/v1/models/fake-model"),
    ("GET", "/v1/models/%2e%2e"),
    ("GET", "/v1/admin/keys"),
    ("GET", "/v1/admin//keys"),
    ("GET", "/v1/usage/"),
    ("GET", "/v1/requests?key_id=x"),
    ("GET", "/./v1/admin/keys"),
]


@pytest.mark.parametrize(("method", "path"), PATH_TRICKS, ids=[p for _, p in PATH_TRICKS])
async def test_path_tricks_are_never_served_without_a_key(
    env: Env, conn: RawConn, method: str, path: str
) -> None:
    body = chat_body() if method == "POST" else b""
    assert await conn.send(
        request(
            method, path, body=body, headers={"Content-Type": "application/json"} if body else {}
        )
    )
    resp = await conn.read_response()
    if resp is None:
        return  # refused by closing
    assert resp.status in (400, 401, 404), f"{method} {path} without a key: {resp!r}"
    assert_openai_error(resp)
