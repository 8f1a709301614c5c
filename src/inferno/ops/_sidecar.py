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
the component's own ops server on ``127.0.0.1:U``, one upstream connection each. The
process exits when its parent does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import mmap
import os
import signal
import struct
import time

_STATE = struct.Struct("<dB55s")  # heartbeat (time.monotonic), state length, state
STATE_SIZE = _STATE.size  # 64
_MAX_HEAD = 64 * 1024
_MAX_BODY = 1024 * 1024


def pack_state(heartbeat: float, state: str) -> bytes:
    raw = state.encode()[:55]
    return _STATE.pack(heartbeat, len(raw), raw)


def unpack_state(data: bytes) -> tuple[float, str]:
    heartbeat, n, raw = _STATE.unpack(data[:_STATE.size])
    return heartbeat, raw[:n].decode(errors="replace")


def _response(status: int, reason: str, body: bytes, extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\n{extra}\r\n").encode() + body


_UNRESPONSIVE = _response(503, "Service Unavailable", b"unresponsive\n", "retry-after: 1\r\n")
_RELAY_TIMEOUT = 30.0


class Sidecar:
    def __init__(self, state: mmap.mmap, upstream: int, stale: float) -> None:
        self._state = state
        self._upstream = upstream
        self._stale = stale

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

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    break
                if len(head) > _MAX_HEAD:
                    break
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = [*lines[0].split(" "), "", ""][:3]
                headers = {k.strip().lower(): v.strip() for k, _, v in
                           (line.partition(":") for line in lines[1:] if line)}
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    writer.write(_response(411, "Length Required", b"length required\n",
                                           "connection: close\r\n"))
                    break
                length = int(headers.get("content-length", "0") or 0)
                if length > _MAX_BODY:
                    writer.write(_response(413, "Payload Too Large", b"too large\n",
                                           "connection: close\r\n"))
                    break
                body = await reader.readexactly(length) if length else b""
                answer = None
                if method == "GET" and target.split("?", 1)[0] == "/health":
                    answer = self.health()
                writer.write(answer or await self.relay(lines, body))
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        with contextlib.suppress(Exception):
            writer.close()

    async def relay(self, lines: list[str], body: bytes) -> bytes:
        """One request to the component's ops server, its whole answer back."""
        kept = [line for line in lines[1:] if line and
                line.split(":", 1)[0].strip().lower() not in ("connection", "keep-alive")]
        head = "\r\n".join([lines[0], *kept, "connection: close", "", ""]).encode("latin-1")
        try:
            r, w = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self._upstream), self._stale)
        except (OSError, TimeoutError):
            return _UNRESPONSIVE
        try:
            w.write(head + body)
            await w.drain()
            # The upstream closes after one answer; a stuck component gets a timeout.
            answer = await asyncio.wait_for(r.read(), _RELAY_TIMEOUT)
        except (OSError, TimeoutError):
            return _UNRESPONSIVE
        finally:
            w.close()
        resp_head, sep, resp_body = answer.partition(b"\r\n\r\n")
        if not sep:
            return _response(502, "Bad Gateway", b"bad upstream answer\n")
        # Its "connection: close" was for us; the client's connection stays as it asked.
        resp_lines = [line for line in resp_head.split(b"\r\n")
                      if not line.lower().startswith((b"connection:", b"keep-alive:"))]
        if not any(line.lower().startswith(b"content-length:") for line in resp_lines[1:]):
            resp_lines.append(b"content-length: %d" % len(resp_body))
        return b"\r\n".join(resp_lines) + b"\r\n\r\n" + resp_body


async def _main(a: argparse.Namespace) -> None:
    fd = os.open(a.state, os.O_RDONLY)
    state = mmap.mmap(fd, STATE_SIZE, prot=mmap.PROT_READ)
    os.close(fd)
    sidecar = Sidecar(state, a.upstream, a.stale)
    server = await asyncio.start_server(sidecar.serve, a.host, a.port, reuse_address=True)
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
