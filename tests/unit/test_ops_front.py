"""The ops front process under abuse: idle, slow and malformed clients never stop /health."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import resource
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from inferno.net import Request, Response
from inferno.ops import OpsServer
from inferno.ops._sidecar import BadRequest, Limits, parse_head
from tests.polling import eventually


@contextlib.asynccontextmanager
async def front(
    limits: Limits | None = None, *, fds: int | None = None,
    routes: dict[tuple[str, str], Any] | None = None,
) -> AsyncIterator[OpsServer]:
    """A front process; ``fds``: its soft file descriptor limit (as under a low ulimit)."""
    ops = OpsServer(
        health=lambda: "ready",
        telemetry=lambda: {"id": "x"},
        registry=CollectorRegistry(),
        own_process=True,
        front_limits=limits,
        routes=routes,
    )
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if fds is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (fds, hard))  # inherited by the child
    try:
        await ops.start("127.0.0.1", 0)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield ops
    finally:
        await ops.stop()


@contextlib.contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for s in opened:
            s.close()


def connect(port: int, opened: list[socket.socket]) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    s.setblocking(False)
    opened.append(s)
    return s


def closed(s: socket.socket, seen: bytearray | None = None) -> bool:
    """Whether the peer has closed ``s`` (EOF or reset); what arrives goes to ``seen``."""
    try:
        while data := s.recv(65536):
            if seen is not None:
                seen += data
        return True
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True


def health(port: int) -> tuple[int, float]:
    t = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/health")
        status = conn.getresponse().status
    finally:
        conn.close()
    return status, time.monotonic() - t


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def unread(port: int) -> int:
    """Bytes clients sent to ``port`` that the server side has not read yet (Linux)."""
    total = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, _, state, queues = line.split()[1:5]
            if state == "01" and int(local.split(":")[1], 16) == port:
                total += int(queues.split(":")[1], 16)
    return total


async def trickle(s: socket.socket, data: bytes, interval: float, sent: list[int]) -> None:
    """Send ``data`` one byte per ``interval`` s (a slowloris), until done or cut.

    Appends to ``sent`` after each byte."""
    for i in range(len(data)):
        try:
            s.send(data[i : i + 1])
        except OSError:
            return
        sent.append(1)
        await asyncio.sleep(interval)


@pytest_asyncio.fixture
async def tasks() -> AsyncIterator[list[asyncio.Task[None]]]:
    running: list[asyncio.Task[None]] = []
    yield running
    for t in running:
        t.cancel()
    await asyncio.gather(*running, return_exceptions=True)


async def test_health_answers_beside_hundreds_of_idle_and_slow_connections(
    tasks: list[asyncio.Task[None]],
) -> None:
    # The production limits, in a process allowed 400 descriptors (as under a low ulimit):
    # 550 connections would exhaust them, and /health would go unanswered.
    cap = 400 - 32
    async with front(fds=400) as ops:
        assert ops._sidecar is not None
        pid = ops._sidecar.proc.pid
        baseline = open_fds(pid)
        with sockets() as opened:
            idle = [connect(ops.port, opened) for _ in range(500)]
            slow = [connect(ops.port, opened) for _ in range(50)]
            sent: list[int] = []
            tasks.extend(
                asyncio.create_task(trickle(s, b"GET /health HTTP/1.1\r\n" * 50, 0.2, sent))
                for s in slow
            )
            # The scenario: the front process is full (its cap), and the slow connections
            # are a few bytes into heads they never finish.
            await eventually(
                lambda: open_fds(pid) - baseline >= cap - 5,
                timeout=10,
                what="the front process to accept the connections",
            )
            await eventually(lambda: len(sent) >= 3 * 50, what="the slow heads to begin")
            assert not any(closed(s) for s in slow)
            for _ in range(5):
                status, took = await asyncio.to_thread(health, ops.port)
                assert status == 200 and took < 1.0
            # Past the cap the oldest idle connections made room; the slow ones stay.
            assert all(closed(s) for s in idle[: 500 + 50 - cap])
            assert not any(closed(s) for s in idle[500 + 50 - cap + 1 :])
            assert not any(closed(s) for s in slow)


async def test_past_the_cap_the_oldest_idle_then_the_slowest_head_make_room(
    tasks: list[asyncio.Task[None]],
) -> None:
    async with front(Limits(max_connections=20, head_timeout=30)) as ops:
        assert ops._sidecar is not None
        pid = ops._sidecar.proc.pid
        baseline = open_fds(pid)
        with sockets() as opened:
            slow = [connect(ops.port, opened) for _ in range(5)]
            sent: list[int] = []
            tasks.extend(
                asyncio.create_task(trickle(s, b"GET /health HTTP/1.1\r\n", 0.2, sent))
                for s in slow
            )
            await eventually(
                lambda: len(sent) >= 5 and unread(ops.port) == 0, what="the heads to begin"
            )
            idle: list[socket.socket] = []
            for i in range(15):  # accepted one after the other, in this order
                idle.append(connect(ops.port, opened))
                await eventually(
                    lambda i=i: open_fds(pid) == baseline + 5 + i + 1, what="the accept"
                )
            assert not any(closed(s) for s in slow + idle)  # 20 open: at the cap
            status, _ = await asyncio.to_thread(health, ops.port)
            assert status == 200
            # The probe made room by closing the oldest idle connection, and only that one.
            await eventually(lambda: closed(idle[0]), what="the oldest idle connection closed")
            assert not any(closed(s) for s in slow + idle[1:])
            # At the cap again with nothing idle: the oldest unfinished head goes.
            idle.append(connect(ops.port, opened))
            await eventually(lambda: open_fds(pid) == baseline + 20, what="the accept")
            for s in idle[1:]:
                s.send(b"G")
            await eventually(lambda: unread(ops.port) == 0, what="all 20 reading a head")
            assert not any(closed(s) for s in slow + idle[1:])
            status, _ = await asyncio.to_thread(health, ops.port)
            assert status == 200
            await eventually(lambda: closed(slow[0]), what="the slowest head closed")
            assert not any(closed(s) for s in slow[1:] + idle[1:])


BAD = [
    pytest.param(b"GET /health HTTP/1.1\r\ncontent-length: 1x\r\n\r\n", 400, id="cl-not-digits"),
    pytest.param(b"GET /health HTTP/1.1\r\ncontent-length: +1\r\n\r\n", 400, id="cl-signed"),
    pytest.param(b"GET /health HTTP/1.1\r\ncontent-length: \xb2\r\n\r\n", 400, id="cl-unicode"),
    pytest.param(
        b"GET /health HTTP/1.1\r\ncontent-length: 0\r\ncontent-length: 0\r\n\r\n",
        400,
        id="cl-twice",
    ),
    pytest.param(b"GET /health HTTP/1.1\r\ncontent-length: 1, 1\r\n\r\n", 400, id="cl-list"),
    pytest.param(
        b"POST /registration HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n", 400, id="te-chunked"
    ),
    pytest.param(b"GET /health HTTP/1.1\r\ntransfer-encoding: identity\r\n\r\n", 400, id="te-any"),
    pytest.param(b"GET /health\r\n\r\n", 400, id="no-version"),
    pytest.param(b"GET  /health HTTP/1.1\r\n\r\n", 400, id="double-space"),
    pytest.param(b"GET /health HTTP/1.1\r\nno colon here\r\n\r\n", 400, id="no-colon"),
    pytest.param(b"GET /health HTTP/1.1\r\ncontent-length : 0\r\n\r\n", 400, id="space-name"),
    pytest.param(b"GET /health HTTP/1.1\r\nx-a: 1\r\n folded\r\n\r\n", 400, id="obs-fold"),
    pytest.param(b"GET /health HTTP/1.1\r\nx-a: 1\nx-b: 2\r\n\r\n", 400, id="bare-lf"),
    pytest.param(
        b"GET /health HTTP/1.1\r\nx-big: " + b"a" * 20_000 + b"\r\n\r\n", 431, id="head-too-large"
    ),
    pytest.param(
        b"POST /registration HTTP/1.1\r\ncontent-length: 99999999\r\n\r\n", 413, id="body-too-large"
    ),
]


@pytest.mark.parametrize(("request_head", "status"), BAD)
async def test_malformed_requests_get_an_error_and_the_connection_closes(
    request_head: bytes, status: int
) -> None:
    async with front() as ops:
        with sockets() as opened:
            s = connect(ops.port, opened)
            s.setblocking(True)
            s.sendall(request_head)
            s.setblocking(False)
            seen = bytearray()
            await eventually(lambda: closed(s, seen), what="the connection closed")
            assert seen.startswith(b"HTTP/1.1 %d " % status), bytes(seen[:200])
            assert b"connection: close" in seen
            status_ok, _ = await asyncio.to_thread(health, ops.port)
            assert status_ok == 200


def test_parse_head_takes_well_formed_requests() -> None:
    method, target, http10, _, headers, length = parse_head(
        b"POST /registration?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n"
        b"Connection: keep-alive\r\nAccept: a\r\nAccept: b\r\n\r\n"
    )
    assert (method, target, http10, length) == ("POST", "/registration?x=1", False, 12)
    assert headers["accept"] == "a, b" and headers["connection"] == "keep-alive"
    assert parse_head(b"GET /health HTTP/1.0\r\n\r\n")[2] is True
    with pytest.raises(BadRequest):
        parse_head(b"GET /health HTTP/2.0\r\n\r\n")


async def test_idle_and_slow_connections_are_closed_after_their_timeouts(
    tasks: list[asyncio.Task[None]],
) -> None:
    limits = Limits(idle_timeout=0.5, head_timeout=0.5)
    async with front(limits) as ops:
        with sockets() as opened:
            started = time.monotonic()
            silent = connect(ops.port, opened)
            # A keep-alive connection after one answer.
            kept = connect(ops.port, opened)
            kept.setblocking(True)
            kept.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            answer = kept.recv(4096)
            kept.setblocking(False)
            assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"healthy\n")
            # A head that never ends, though bytes keep coming.
            slow = connect(ops.port, opened)
            head = b"GET /health HTTP/1.1\r\n" * 10  # 220 bytes, 11 s: never done in time
            sent: list[int] = []
            tasks.append(asyncio.create_task(trickle(slow, head, 0.05, sent)))
            assert not any(closed(s) for s in (silent, kept, slow))  # all open at first
            for s, what in (
                (silent, "the silent connection"),
                (kept, "the idle keep-alive"),
                (slow, "the slow head"),
            ):
                await eventually(lambda s=s: closed(s), timeout=5, what=f"{what} closed")
            assert time.monotonic() - started >= 0.4
            assert 0 < len(sent) < len(head)  # cut while still sending
            status, _ = await asyncio.to_thread(health, ops.port)
            assert status == 200


async def test_relayed_requests_reuse_upstream_connections() -> None:
    # Each relayed request used to open a connection to the component (with a thousand
    # nodes renewing, that cost more than the requests); they now reuse a few.
    peers: list[tuple[str, int] | None] = []
    bodies: list[bytes] = []

    async def echo(req: Request) -> Response:
        peers.append(req.client)
        bodies.append(req.body)
        return Response.json({"n": len(bodies)})

    async with front(routes={("POST", "/echo"): echo, ("DELETE", "/echo/*"): echo}) as ops:
        def call(i: int) -> tuple[int, bytes]:
            conn = http.client.HTTPConnection("127.0.0.1", ops.port, timeout=5)
            try:
                if i % 2:
                    conn.request("DELETE", f"/echo/{i}")
                else:
                    conn.request("POST", "/echo", body=f"body {i}".encode())
                r = conn.getresponse()
                return r.status, r.read()
            finally:
                conn.close()

        answers = [await asyncio.to_thread(call, i) for i in range(40)]
    assert [status for status, _ in answers] == [200] * 40
    assert len(peers) == 40, "every request reached the component"
    assert bodies[::2] == [f"body {i}".encode() for i in range(0, 40, 2)]
    assert len(set(peers)) <= 2, f"{len(set(peers))} upstream connections for 40 requests"
