"""Load and measurement: wrk runs, CPU time and RSS from /proc, a time-to-first-chunk
client, and a /health prober.

CPU per request is (utime + stime) of the gateway's processes (a process and its
children, every thread included) over the load window, divided by the requests wrk
completed in it. Kernel time in the load generator and the upstream is not counted.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")

WRK_LUA = r"""
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTH")
if auth ~= nil and auth ~= "" then wrk.headers["Authorization"] = "Bearer " .. auth end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"socket_errors":%d,"non2xx":%d,' ..
    '"p50_us":%d,"p99_us":%d}\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


def body(model: str, stream: bool) -> str:
    return json.dumps(
        {
            "model": model,
            "stream": stream,
            "max_tokens": 16,
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What is the capital of France?"},
            ],
        },
        separators=(",", ":"),
    )


def _children(pid: int) -> list[int]:
    out = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            kids = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
            for kid in kids:
                out += _children(int(kid))
    except OSError:
        pass
    return out


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in _children(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / _TICK


def rss_mb(pid: int) -> float:
    total = 0
    for p in _children(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    cpu_ms_per_req: float | None


def wrk(
    url: str,
    lua: Path,
    conns: int,
    seconds: float,
    body_json: str,
    auth: str | None = None,
    pid: int | None = None,
) -> Run:
    env = {**os.environ, "BENCH_BODY": body_json, "BENCH_AUTH": auth or ""}
    threads = 1 if conns < 16 else 2
    argv = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(conns),
        "-d",
        f"{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(lua),
        url,
    ]
    before = cpu_seconds(pid) if pid else 0.0
    proc = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=seconds + 30, check=False
    )
    after = cpu_seconds(pid) if pid else 0.0
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
    r = json.loads(line.removeprefix("BENCH_JSON "))
    n = r["requests"]
    return Run(
        rps=n / (r["duration_us"] / 1e6),
        p50_ms=r["p50_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        requests=n,
        errors=r["socket_errors"] + r["non2xx"],
        cpu_ms_per_req=(after - before) * 1000 / n if pid and n else None,
    )


def _request(host: str, port: int, body_json: str, auth: str | None) -> bytes:
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}:{port}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body_json)}\r\n"
    )
    if auth:
        head += f"authorization: Bearer {auth}\r\n"
    return (head + "\r\n" + body_json).encode()


class StreamClient:
    """One keep-alive connection (as OpenAI clients keep one) for streamed requests: time
    to the first SSE event (ms, from sending the request) and every event's arrival."""

    def __init__(self, port: int, body_json: str, auth: str | None) -> None:
        self._req = _request("127.0.0.1", port, body_json, auth)
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def one(self) -> list[float]:
        s = self._sock
        t0 = time.perf_counter()
        s.sendall(self._req)
        buf = b""
        events: list[float] = []
        seen = 0
        while True:
            data = s.recv(65536)
            if not data:
                raise RuntimeError("stream closed early")
            buf += data
            now = time.perf_counter()
            count = buf.count(b"data: ")
            events += [(now - t0) * 1000] * (count - seen)
            seen = count
            if b"[DONE]" in buf and buf.endswith(b"0\r\n\r\n"):
                return events

    def close(self) -> None:
        self._sock.close()


class HealthProber(threading.Thread):
    """GET ``path`` every ``interval`` s on one keep-alive connection until stopped."""

    def __init__(self, port: int, path: str = "/health", interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.path = path
        self.interval = interval
        self.latencies: list[float] = []
        self.failures = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        req = f"GET {self.path} HTTP/1.1\r\nhost: 127.0.0.1:{self.port}\r\n\r\n".encode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while not self._stop_event.wait(self.interval):
                t0 = time.perf_counter()
                try:
                    s.sendall(req)
                    data = b""
                    while b"\r\n\r\n" not in data or not _complete(data):
                        chunk = s.recv(65536)
                        if not chunk:
                            raise OSError("closed")
                        data += chunk
                    self.latencies.append((time.perf_counter() - t0) * 1000)
                except OSError:
                    self.failures += 1
                    return

    def stop(self) -> None:
        self._stop_event.set()
        self.join(15)


def _complete(data: bytes) -> bool:
    head, _, rest = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(rest) >= int(line.split(b":")[1])
    return True


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
