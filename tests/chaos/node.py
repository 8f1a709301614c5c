"""A fast, deterministic OpenAI-compatible fake node with fault knobs.

Raw asyncio sockets rather than our HTTP server, because the faults are about the wire:
resets before headers, resets mid-stream, hangs, slow drips, refused connections. The
same port answers ``GET /health`` and ``GET /telemetry`` (it is its own ops port).

Modes (``node.mode``, switchable at any time):
  ok            answer normally (JSON, or SSE with ``chunks`` events ``chunk_delay`` apart)
  status:N      answer HTTP N with an OpenAI error body
  reset         reset the connection before any response byte
  reset_after:K send headers and K events, then reset
  hang          read the request, never answer
  drip:S        stream normally but S seconds between events
  stall         send headers and one event, then go silent
  refuse        stop listening (connection refused); any other mode listens again

Run as a process (for SIGKILL tests): ``python -m tests.chaos.node --port P --lb HOST:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import struct
import urllib.request

_SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
             b"transfer-encoding: chunked\r\n\r\n")


class ChaosNode:
    def __init__(self, node_id: str, *, model: str = "fake-model", chunks: int = 5,
                 chunk_delay: float = 0.005, answer_delay: float = 0.0) -> None:
        self.id = node_id
        self.model = model
        self.chunks = chunks
        self.chunk_delay = chunk_delay
        self.answer_delay = answer_delay
        self._mode = "ok"
        self.port = 0
        self.requests = 0  # inference requests received, in any mode
        self.by_mode: dict[str, int] = {}
        self.open_connections = 0
        self.in_flight = 0  # inference requests being answered (or hung on)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def mode(self) -> str:
        return self._mode

    async def set_mode(self, mode: str) -> None:
        self._mode = mode
        if mode == "refuse":
            await self._close_server()
        elif self._server is None and self.port:
            await self.start(self.port)

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _close_server(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                _reset(w)
            self._server = None

    async def stop(self) -> None:
        await self._close_server()

    def registration(self, lease: float = 30.0) -> dict[str, object]:
        return {"id": self.id, "address": f"127.0.0.1:{self.port}", "metrics_port": self.port,
                "models": [self.model], "capacity": 8, "lease_seconds": lease}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_connections += 1
        self._writers.add(writer)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                path, body = request
                if path in ("/health", "/telemetry"):
                    await self._ops(writer, path)
                    continue
                self.requests += 1
                mode = self._mode
                self.by_mode[mode] = self.by_mode.get(mode, 0) + 1
                self.in_flight += 1
                try:
                    if not await self._answer(reader, writer, mode, body):
                        return
                finally:
                    self.in_flight -= 1
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return  # the peer left, or the node is shutting down
        finally:
            self.open_connections -= 1
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _ops(self, writer: asyncio.StreamWriter, path: str) -> None:
        body = (b"healthy\n" if path == "/health" else json.dumps(
            {"id": self.id, "state": "ready", "queue_depth": 0}).encode())
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      mode: str, body: bytes) -> bool:
        """Returns False when the connection must not be reused."""
        stream = b'"stream": true' in body or b'"stream":true' in body
        name, _, arg = mode.partition(":")
        if self.answer_delay:
            await asyncio.sleep(self.answer_delay)
        if name == "reset":
            _reset(writer)
            return False
        if name == "hang":
            await reader.read()  # until the proxy gives up and closes the connection
            return False
        if name == "status":
            err = json.dumps({"error": {"message": "chaos", "type": "server_error",
                                        "param": None, "code": "chaos"}}).encode()
            writer.write(b"HTTP/1.1 %s X\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n" % (arg.encode(), len(err)) + err)
            await writer.drain()
            return True
        if not stream:
            payload = json.dumps(_completion(self.model, self.chunks)).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n" % len(payload) + payload)
            await writer.drain()
            return True
        writer.write(_SSE_HEAD)
        delay = float(arg) if name == "drip" else self.chunk_delay
        for i in range(self.chunks):
            if name == "reset_after" and i == int(arg):
                await writer.drain()
                _reset(writer)
                return False
            writer.write(_chunk(_event(self.model, f" w{i}", None)))
            await writer.drain()
            if name == "stall":
                await reader.read()
                return False
            await asyncio.sleep(delay)
        writer.write(_chunk(_event(self.model, "", "length")) + _chunk(b"data: [DONE]\n\n")
                     + b"0\r\n\r\n")
        await writer.drain()
        return True


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    path = lines[0].split(" ")[1]
    length = 0
    for line in lines[1:]:
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    body = await reader.readexactly(length) if length else b""
    return path, body


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _event(model: str, text: str, finish: str | None) -> bytes:
    return b"data: " + json.dumps({
        "id": "chatcmpl-chaos", "object": "chat.completion.chunk", "created": 0, "model": model,
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}
    ).encode() + b"\n\n"


def _completion(model: str, n: int) -> dict[str, object]:
    return {"id": "chatcmpl-chaos", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant",
                                                 "content": " ".join(f"w{i}" for i in range(n))},
                         "finish_reason": "length"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}}


async def _heartbeat(node: ChaosNode, lb: str, interval: float) -> None:
    body = json.dumps(node.registration(lease=interval * 3)).encode()
    while True:
        req = urllib.request.Request(f"http://{lb}/registration", data=body,
                                     headers={"content-type": "application/json"})
        with contextlib.suppress(OSError):
            await asyncio.to_thread(_post, req)
        await asyncio.sleep(interval)


def _post(req: urllib.request.Request) -> None:
    with urllib.request.urlopen(req, timeout=2) as resp:
        resp.read()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--id", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--lb", required=True)
    ap.add_argument("--mode", default="ok")
    args = ap.parse_args()

    async def run() -> None:
        node = ChaosNode(args.id)
        await node.start(args.port)
        await node.set_mode(args.mode)
        await _heartbeat(node, args.lb, 0.5)

    asyncio.run(run())


if __name__ == "__main__":
    main()
