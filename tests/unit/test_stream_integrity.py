"""Stream integrity: a stream the proxy relays is complete only when the node sent [DONE].

Every upstream here is a real TCP server on 127.0.0.1 speaking raw HTTP/1.1, so the test
controls the framing (close-delimited or chunked) and exactly how the body ends (FIN,
RST, silence, half an event). Each cut scenario first asserts the client really got some
of the answer (the cut happened mid-stream), then how the proxy reported it.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx2 as httpx
import openai
import orjson
import pytest
import pytest_asyncio

from inferno.api.node import Registration
from inferno.core.config import ProxySettings
from inferno.core.errors import UpstreamProtocolError
from inferno.proxy.gateway import Gateway
from tests.conftest import free_port, start_gateway, start_plain_gateway
from tests.polling import eventually

MSG = [{"role": "user", "content": "hello"}]
CHAT = {"model": "fake-model", "messages": MSG, "stream": True}

CLOSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
CHUNK_END = b"0\r\n\r\n"
DONE = b"data: [DONE]\n\n"
WORDS = ("Hel", "lo", " there")


def event(delta: dict[str, str], finish: str | None = None) -> bytes:
    return (
        b"data: "
        + orjson.dumps(
            {
                "id": "c1",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "fake-model",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )
        + b"\n\n"
    )


ROLE = event({"role": "assistant", "content": ""})
TOKENS = [event({"content": w}) for w in WORDS]
FINISH = event({}, "stop")
ANSWER = ROLE + b"".join(TOKENS)  # what every cut scenario sends before it fails


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def rst_close(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


Script = Callable[["Upstream", asyncio.StreamWriter], Awaitable[None]]


class Upstream:
    """A scripted OpenAI-ish node: ``GET /v1/models`` lists fake-model; POST number i runs
    ``scripts[i]`` (the last one again once they run out). ``release`` is set by a test
    once its client saw the first chunks, so a script cuts only after that."""

    def __init__(self, *scripts: Script) -> None:
        self.scripts = scripts
        self.posts = 0
        self.release = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> Upstream:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            if head.startswith(b"GET"):
                body = orjson.dumps({"object": "list", "data": [{"id": "fake-model"}]})
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\nconnection: close\r\n\r\n%b" % (len(body), body)
                )
            else:
                script = self.scripts[min(self.posts, len(self.scripts) - 1)]
                self.posts += 1
                await script(self, writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


# ---- scripts ---------------------------------------------------------------------------
async def close_framed_killed(up: Upstream, w: asyncio.StreamWriter) -> None:
    """Close-delimited SSE, then the server goes away (FIN): the bug's own scenario."""
    w.write(CLOSE_HEAD + ANSWER)
    await w.drain()
    await up.release.wait()


async def chunked_reset(up: Upstream, w: asyncio.StreamWriter) -> None:
    w.write(CHUNKED_HEAD + chunked(ANSWER))
    await w.drain()
    await up.release.wait()
    rst_close(w)


async def goes_idle(up: Upstream, w: asyncio.StreamWriter) -> None:
    w.write(CLOSE_HEAD + ANSWER)
    await w.drain()
    await asyncio.Event().wait()  # silent until the test stops the upstream


async def half_event_then_eof(up: Upstream, w: asyncio.StreamWriter) -> None:
    w.write(CLOSE_HEAD + ANSWER)
    await w.drain()
    await up.release.wait()
    w.write(b'data: {"id":"c1","object":"chat.completion.chunk","choi')


async def well_behaved(up: Upstream, w: asyncio.StreamWriter) -> None:
    w.write(CLOSE_HEAD + ANSWER + FINISH + DONE)


async def chunked_done_split(up: Upstream, w: asyncio.StreamWriter) -> None:
    """Chunked, every event split across writes, [DONE] itself in three pieces."""
    w.write(CHUNKED_HEAD)
    for piece in (
        ANSWER[:7],
        ANSWER[7:50],
        ANSWER[50:] + FINISH[:20],
        FINISH[20:] + b"data: [DO",
        b"NE]\n",
        b"\n",
    ):
        w.write(chunked(piece))
        await w.drain()
        await asyncio.sleep(0.01)  # separate reads on the proxy's side
    w.write(CHUNK_END)


async def crlf_done(up: Upstream, w: asyncio.StreamWriter) -> None:
    body = (ANSWER + FINISH + DONE).replace(b"\n", b"\r\n")
    w.write(CLOSE_HEAD + body)


async def done_then_junk(up: Upstream, w: asyncio.StreamWriter) -> None:
    w.write(CLOSE_HEAD + ANSWER + FINISH + DONE + b'data: {"junk": true}\n\ndata: half')


# ---- helpers ---------------------------------------------------------------------------
def add(gw: Gateway, node_id: str, port: int) -> None:
    gw.pool.upsert(
        Registration(
            id=node_id,
            address=f"127.0.0.1:{port}",
            metrics_port=6100,
            models=["fake-model"],
            lease_seconds=30,
        )
    )


def cut_count(gw: Gateway, reason: str) -> float:
    value = gw.metrics.registry.get_sample_value(
        "inferno_proxy_streams_cut_total", {"reason": reason}
    )
    return value or 0.0


def events(text: bytes) -> list[bytes]:
    return [e.removeprefix(b"data: ") for e in text.replace(b"\r\n", b"\n").split(b"\n\n") if e]


async def stream_through(
    gw: Gateway,
    up: Upstream,
    body: dict[str, object] | None = None,
) -> tuple[bytes, httpx.Response]:
    """POSTs a streamed chat request; once the client holds the last word of ANSWER it
    releases the upstream's fault. Returns the whole body the client received."""
    got = b""
    async with (
        httpx.AsyncClient(timeout=10) as http,
        http.stream(
            "POST", f"http://127.0.0.1:{gw.server.port}/v1/chat/completions", json=body or CHAT
        ) as r,
    ):
        async for raw in r.aiter_raw():
            got += raw
            if b'"content":" there"' in got:
                up.release.set()
    return got, r


@pytest_asyncio.fixture
async def gw() -> AsyncIterator[Gateway]:
    g = await start_plain_gateway(response_timeout=5, stream_idle_timeout=0.3, drain_timeout=1)
    yield g
    await g.drain()


# ---- the relay ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("script", "reason"),
    [
        pytest.param(close_framed_killed, "closed", id="close-framed-killed"),
        pytest.param(chunked_reset, "reset", id="chunked-reset"),
        pytest.param(goes_idle, "idle_timeout", id="idle"),
        pytest.param(half_event_then_eof, "malformed", id="half-event-eof"),
    ],
)
async def test_a_cut_stream_ends_with_an_error_event_never_done(
    gw: Gateway, script: Script, reason: str
) -> None:
    up = await Upstream(script).start()
    try:
        add(gw, "n", up.port)
        got, r = await stream_through(gw, up)
        assert r.status_code == 200 and up.posts == 1
        seen = events(got)
        # The cut happened mid-stream: the client holds the answer's start...
        assert seen[: len(TOKENS) + 1] == events(ANSWER)
        # ...then one error event, and no [DONE]; no half event reached it either.
        assert b"[DONE]" not in seen
        assert len(seen) == len(TOKENS) + 2
        error = orjson.loads(seen[-1])["error"]
        assert error["type"] == "server_error" and error["message"]
        assert "127.0.0.1" not in error["message"] and str(up.port) not in error["message"]
        assert error["code"] == (
            "upstream_timeout" if reason == "idle_timeout" else "upstream_error"
        )
        assert cut_count(gw, reason) == 1
        assert sum(cut_count(gw, r) for r in ("closed", "reset", "idle_timeout", "malformed")) == 1
        node = gw.pool.get("n")
        assert node is not None and node.failures == 1 and node.outstanding == 0
    finally:
        await up.stop()


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(well_behaved, id="close-framed"),
        pytest.param(chunked_done_split, id="chunked-done-split"),
        pytest.param(crlf_done, id="crlf"),
        pytest.param(done_then_junk, id="done-then-junk"),
    ],
)
async def test_a_stream_with_done_is_complete(gw: Gateway, script: Script) -> None:
    up = await Upstream(script).start()
    try:
        add(gw, "n", up.port)
        got, r = await stream_through(gw, up)
        assert r.status_code == 200
        seen = events(got)
        assert seen[-1] == b"[DONE]"  # last: nothing after it was relayed
        assert seen[:-1] == events(ANSWER + FINISH)
        assert not any(e.startswith(b'{"error"') for e in seen)
        assert gw.metrics.registry.get_sample_value(
            "inferno_proxy_streams_cut_total", {"reason": "closed"}
        ) in (None, 0.0)
        node = gw.pool.get("n")
        assert node is not None and node.failures == 0 and node.outstanding == 0
    finally:
        await up.stop()


async def test_a_nodes_own_error_event_is_passed_on_not_doubled(gw: Gateway) -> None:
    async def node_error(up: Upstream, w: asyncio.StreamWriter) -> None:
        err = (
            b'data: {"error": {"message": "engine failed", "type": "server_error", '
            b'"param": null, "code": "engine_error"}}\n\n'
        )
        w.write(CHUNKED_HEAD + chunked(ANSWER) + chunked(err) + CHUNK_END)

    up = await Upstream(node_error).start()
    try:
        add(gw, "n", up.port)
        got, _ = await stream_through(gw, up)
        seen = events(got)
        assert seen[:-1] == events(ANSWER)
        assert orjson.loads(seen[-1])["error"]["code"] == "engine_error"
        assert b"[DONE]" not in seen
        assert cut_count(gw, "closed") == 0
    finally:
        await up.stop()


async def test_cut_streams_are_on_the_metrics_page(gw: Gateway) -> None:
    up = await Upstream(close_framed_killed).start()
    try:
        add(gw, "n", up.port)
        await stream_through(gw, up)
        async with httpx.AsyncClient() as http:
            page = (await http.get(f"http://127.0.0.1:{gw.ops.port}/metrics")).text
        assert 'inferno_proxy_streams_cut_total{reason="closed"} 1.0' in page
    finally:
        await up.stop()


# ---- with the official SDK, against a real process that is killed mid-stream ------------
KILLABLE_NODE = r"""
import json, socket, sys, threading

srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(64)
print(srv.getsockname()[1], flush=True)
ANSWER = bytes.fromhex(sys.argv[1])

def handle(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        rest += conn.recv(65536)
    if head.startswith(b"GET"):
        body = json.dumps({"object": "list", "data": [{"id": "fake-model"}]}).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)
        conn.close()
        return
    # Valid HTTP/1.1: no content-length, not chunked, the body ends when the socket closes.
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                 b"connection: close\r\n\r\n" + ANSWER)
    threading.Event().wait()  # more tokens never come: this process is about to be killed

while True:
    c, _ = srv.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"""


async def test_openai_sdk_raises_when_a_close_framed_node_is_killed_mid_stream(
    tmp_path: Path,
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLABLE_NODE, ANSWER.hex(), stdout=asyncio.subprocess.PIPE
    )
    gw: Gateway | None = None
    try:
        assert proc.stdout is not None
        port = int(await asyncio.wait_for(proc.stdout.readline(), 10))
        gw = await start_gateway(tmp_path, backends=[f"127.0.0.1:{port}"])
        await eventually(
            lambda: gw.pool.snapshot.by_model.get("fake-model"),
            what="the static backend in the pool",
        )
        client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{gw.server.port}/v1", api_key="x", max_retries=0
        )
        stream = await client.chat.completions.create(model="fake-model", messages=MSG, stream=True)  # type: ignore[arg-type]
        words: list[str] = []
        with pytest.raises(openai.APIError) as raised:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    words.append(chunk.choices[0].delta.content)
                    if len(words) == len(WORDS):  # the whole answer so far: kill the node
                        proc.kill()
                        await proc.wait()
        assert proc.returncode == -9  # it really was killed mid-stream...
        assert words == list(WORDS)  # ...after the client got the first tokens
        assert "127.0.0.1" not in str(raised.value)
        assert cut_count(gw, "closed") == 1
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if gw is not None:
            await gw.drain()


# ---- cache and request log -----------------------------------------------------------------
async def test_a_cut_stream_is_never_cached(tmp_path: Path) -> None:
    up = await Upstream(close_framed_killed, well_behaved).start()
    gw = await start_gateway(tmp_path, cache=True)
    try:
        add(gw, "n", up.port)
        body = {**CHAT, "temperature": 0}
        first, r1 = await stream_through(gw, up, body)
        assert b"[DONE]" not in first and b'{"error"' in first  # the first one was cut
        assert "x-inferno-cache" not in r1.headers
        second, r2 = await stream_through(gw, up, body)
        assert "x-inferno-cache" not in r2.headers  # not served from the cache...
        assert up.posts == 2  # ...the node answered it again
        assert events(second)[-1] == b"[DONE]"
        third, r3 = await stream_through(gw, up, body)
        assert r3.headers.get("x-inferno-cache") == "hit"  # a complete stream is cached
        assert up.posts == 2 and third == second
    finally:
        await gw.drain()
        await up.stop()


async def test_the_request_log_marks_a_cut_stream(tmp_path: Path) -> None:
    up = await Upstream(close_framed_killed, well_behaved).start()
    gw = await start_gateway(tmp_path)
    try:
        add(gw, "n", up.port)
        _, cut = await stream_through(gw, up)
        _, whole = await stream_through(gw, up)
        store = gw.security.store
        assert store is not None

        async def rows() -> dict[str, dict[str, object]]:
            found = {r["request_id"]: r for r in await store.requests.recent(limit=10)}
            return found if len(found) == 2 else {}

        by_id = await eventually(rows, what="both request log rows")
        cut_row = by_id[cut.headers["x-request-id"]]
        assert cut_row["stream"] and cut_row["status"] == 502
        assert cut_row["error_code"] == "stream_cut:closed"
        # Accounted for what reached the client: the role chunk and the three words.
        assert cut_row["completion_tokens"] == len(WORDS)
        whole_row = by_id[whole.headers["x-request-id"]]
        assert whole_row["status"] == 200 and whole_row["error_code"] is None
    finally:
        await gw.drain()
        await up.stop()


# ---- non-streamed answers, failover, and what clients are told --------------------------
async def cut_json(up: Upstream, w: asyncio.StreamWriter) -> None:
    w.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n"
        b'{"id": "x", "object": "chat.completion", "choi'
    )


async def whole_json(up: Upstream, w: asyncio.StreamWriter) -> None:
    body = orjson.dumps(
        {"id": "y", "object": "chat.completion", "created": 1, "model": "fake-model", "choices": []}
    )
    w.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n" + body
    )


async def test_a_cut_close_framed_json_body_is_not_a_200(gw: Gateway) -> None:
    up = await Upstream(cut_json).start()
    try:
        add(gw, "n", up.port)
        async with httpx.AsyncClient() as http:
            r = await http.post(
                f"http://127.0.0.1:{gw.server.port}/v1/chat/completions",
                json={"model": "fake-model", "messages": MSG},
            )
        assert up.posts == 1  # the node did answer, with half a body
        assert r.status_code == 503
        message = r.json()["error"]["message"]
        assert "incomplete" in message and "127.0.0.1" not in message
    finally:
        await up.stop()


@pytest.mark.parametrize("retryable", [True, False])
async def test_failover_follows_the_errors_retryable(
    retryable: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(UpstreamProtocolError, "retryable", retryable)
    bad, good = await Upstream(cut_json).start(), await Upstream(whole_json).start()
    gw = Gateway(
        ProxySettings(
            port=0,
            ops_port=0,
            connect_timeout=0.5,
            response_timeout=5,
            drain_timeout=1,
            routing="round-robin",
        )
    )
    await gw.start()
    try:
        add(gw, "bad", bad.port)
        add(gw, "good", good.port)
        async with httpx.AsyncClient() as http:
            for _ in range(2):  # one of the two starts on the bad node
                r = await http.post(
                    f"http://127.0.0.1:{gw.server.port}/v1/chat/completions",
                    json={"model": "fake-model", "messages": MSG},
                )
                if bad.posts:
                    break
        assert bad.posts == 1  # the failing node was tried first
        if retryable:
            assert r.status_code == 200 and r.headers["x-inferno-backend"] == "good"
            assert r.headers["x-inferno-attempts"] == "2"
        else:
            assert r.status_code == 503 and r.headers["x-inferno-attempts"] == "1"
    finally:
        await gw.drain()
        await bad.stop()
        await good.stop()


async def test_all_nodes_failed_never_tells_the_client_their_addresses(
    gw: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    ports = [free_port(), free_port()]
    for i, port in enumerate(ports):
        add(gw, f"d{i}", port)
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"http://127.0.0.1:{gw.server.port}/v1/completions",
            json={"model": "fake-model", "prompt": "x"},
        )
    assert r.status_code == 503 and r.headers["x-inferno-attempts"] == "2"  # both refused
    message = r.json()["error"]["message"]
    assert message == "All 2 node(s) tried for this request failed: could not connect."
    assert "127.0.0.1" not in r.text and not any(str(p) in r.text for p in ports)
    # The operator still learns which node, where.
    assert any(f"127.0.0.1:{ports[0]}" in rec.getMessage() for rec in caplog.records)


USAGE = (
    b"data: "
    + orjson.dumps(
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "fake-model",
            "choices": [],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        }
    )
    + b"\n\n"
)


async def crlf_with_usage(up: Upstream, w: asyncio.StreamWriter) -> None:
    w.write(CLOSE_HEAD + (ANSWER + FINISH + USAGE + DONE).replace(b"\n", b"\r\n"))


async def test_an_injected_usage_chunk_is_taken_out_whatever_the_line_endings(
    tmp_path: Path,
) -> None:
    up = await Upstream(crlf_with_usage).start()
    gw = await start_gateway(tmp_path)
    try:
        add(gw, "n", up.port)
        got, r = await stream_through(gw, up)  # no stream_options: the proxy asks for usage
        assert r.status_code == 200
        assert b"\r\n\r\n" in got, "the node's CRLF framing did not reach the client"
        sent = events(got)
        assert sent[-1] == b"[DONE]" and len(sent) == len(WORDS) + 3  # role, words, finish
        assert not any(b'"usage"' in e for e in sent), "the client got a usage chunk"
        store = gw.security.store
        assert store is not None

        async def row() -> dict[str, object] | None:
            rows = await store.requests.recent(limit=1)
            return rows[0] if rows else None

        logged = await eventually(row, what="the request log row")
        assert (logged["prompt_tokens"], logged["completion_tokens"]) == (7, 3)
    finally:
        await gw.drain()
        await up.stop()
