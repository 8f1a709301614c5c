"""What auth + rate limits + the request log cost the proxy, per request.

Runs ``inferno proxy`` as a child process twice in front of an in-process fast fake node
(a fixed JSON answer, no generation): once with everything off (``--auth none``, no
database, no limits) and once with an API key (auth on), a per-key rate limit high
enough never to refuse, and the request log writing to SQLite. For each it reports the
proxy's CPU time per request (from /proc) and the latency a client sees, with the direct
node latency for reference, and the ratios on/off.

    .venv/bin/python bench/security_overhead.py [--requests 4000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ANSWER = (b'{"id":"x","object":"chat.completion","created":1,"model":"fake-model","choices":'
          b'[{"index":0,"message":{"role":"assistant","content":"Paris"},"finish_reason":'
          b'"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}')
MODELS = b'{"object":"list","data":[{"id":"fake-model","object":"model"}]}'
BODY = (b'{"model":"fake-model","max_tokens":8,"messages":[{"role":"user","content":'
        b'"What is the capital of France?"}]}')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def fake_node(port: int, ops_port: int) -> list[asyncio.Server]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if length:
                    await reader.readexactly(length)
                path = head.split(b" ", 2)[1]
                body = (MODELS if path == b"/v1/models" else b"healthy" if path == b"/health"
                        else ANSWER)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%b" % (len(body), body))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return [await asyncio.start_server(serve, "127.0.0.1", port),
            await asyncio.start_server(serve, "127.0.0.1", ops_port)]


class Client:
    """A keep-alive HTTP/1.1 client that costs next to nothing."""

    def __init__(self, port: int, auth: bytes) -> None:
        self.port = port
        self.request = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: "
                        b"application/json\r\n" + auth + b"content-length: %d\r\n\r\n%b"
                        % (len(BODY), BODY))

    async def run(self, n: int, latencies: list[float]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        for _ in range(n):
            t = time.perf_counter()
            writer.write(self.request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head[9:12]
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t)
            if status != b"200":
                raise RuntimeError(f"status {status.decode()}: {head[:200]!r}")
        writer.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(port: int, auth: bytes, n: int, conc: int, pid: int | None
                  ) -> tuple[float, float]:
    await asyncio.gather(*(Client(port, auth).run(200, []) for _ in range(conc)))  # warm up
    latencies: list[float] = []
    cpu0 = cpu_seconds(pid) if pid else 0.0
    await asyncio.gather(*(Client(port, auth).run(n // conc, latencies) for _ in range(conc)))
    cpu = (cpu_seconds(pid) - cpu0) / len(latencies) if pid else 0.0
    return statistics.median(latencies), cpu


def start_proxy(tmp: Path, node: str, secure: bool) -> tuple[subprocess.Popen[bytes], int, bytes]:
    port, ops = free_port(), free_port()
    env = {**os.environ, "INFERNO_PROXY_DATA_DIR": str(tmp)}
    auth = b""
    args = ["--backends", node, "--port", str(port), "--ops-port", str(ops),
            "--log-level", "warning"]
    if secure:
        out = subprocess.run([sys.executable, "-m", "inferno", "keys", "create", "--name",
                              "bench", "--rpm", "10000000", "--tpm", "1000000000"],
                             env=env, check=True, capture_output=True)
        auth = b"authorization: Bearer " + out.stdout.strip() + b"\r\n"
        args += ["--auth", "on"]
    else:
        env["INFERNO_DATABASE_URL"] = "none"
        args += ["--auth", "none"]
    proc = subprocess.Popen([sys.executable, "-m", "inferno", "proxy", *args], env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.1)
    time.sleep(2.5)  # the static node passes its first probes and health checks
    return proc, port, auth


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=8)
    a = ap.parse_args()
    node_port, node_ops = free_port(), free_port()
    servers = await fake_node(node_port, node_ops)
    direct, _ = await measure(node_port, b"", a.requests, a.concurrency, None)
    results = {}
    for secure in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            proc, port, auth = await asyncio.to_thread(
                start_proxy, Path(tmp), f"127.0.0.1:{node_port}/{node_ops}", secure)
            try:
                results[secure] = await measure(port, auth, a.requests, a.concurrency, proc.pid)
            finally:
                proc.terminate()
                proc.wait(30)
    del servers  # left open: the process exits next
    off, on = results[False], results[True]
    print(f"requests {a.requests}, concurrency {a.concurrency}; direct node p50 "
          f"{direct * 1e3:.3f} ms")
    for name, (lat, cpu) in (("off", off), ("auth+limits+log on", on)):
        print(f"  {name:20s} p50 {lat * 1e3:.3f} ms (added {(lat - direct) * 1e3:.3f} ms), "
              f"proxy CPU {cpu * 1e3:.3f} ms/request")
    print(f"  on/off: CPU x{on[1] / off[1]:.2f} (+{(on[1] - off[1]) * 1e3:.3f} ms), "
          f"added latency x{(on[0] - direct) / max(off[0] - direct, 1e-9):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
