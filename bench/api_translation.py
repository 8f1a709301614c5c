"""What serving the Anthropic Messages and Responses APIs by translation costs the proxy.

Runs ``inferno proxy`` as a child process (auth on with a key, rate limits, the SQLite
request log: the default features) in front of an in-process fast fake node (a fixed
chat-completion JSON, no generation), and sends the same question, non-streamed, as
``/v1/chat/completions`` (the baseline), ``/v1/messages``, ``/v1/responses`` with
``store: false`` and ``/v1/responses`` stored (one database write per request). Rounds
are interleaved (chat, messages, responses, responses+store, chat, ...); the table gives
medians over rounds of the proxy's CPU per request (from /proc) and of p50 latency, and
each API's ratio to chat completions.

With ``--baseline-src PATH`` (another checkout's ``src/``) a second proxy from that tree
joins the rounds for chat completions only (the two proxies take turns going first): the
A/B of the chat hot path between the two trees; ``--only chat`` leaves the other APIs out.

    .venv/bin/python bench/api_translation.py [--rounds 5] [--requests 2000]
        [--concurrency 8] [--baseline-src /tmp/base/src] [--only chat,messages,...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from security_overhead import cpu_seconds, fake_node, free_port

SRC = Path(__file__).resolve().parent.parent / "src"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
APIS = {
    "chat": ("/v1/chat/completions", {"model": "fake-model", "max_tokens": 8,
                                      "messages": QUESTION}),
    "messages": ("/v1/messages", {"model": "fake-model", "max_tokens": 8,
                                  "messages": QUESTION}),
    "responses": ("/v1/responses", {"model": "fake-model", "max_output_tokens": 8,
                                    "input": QUESTION[0]["content"], "store": False}),
    "responses+store": ("/v1/responses", {"model": "fake-model", "max_output_tokens": 8,
                                          "input": QUESTION[0]["content"]}),
}


class Client:
    """A keep-alive HTTP/1.1 client that costs next to nothing."""

    def __init__(self, port: int, auth: bytes, path: str, body: bytes) -> None:
        self.port = port
        self.request = (b"POST " + path.encode() + b" HTTP/1.1\r\nhost: x\r\ncontent-type: "
                        b"application/json\r\n" + auth + b"content-length: %d\r\n\r\n%b"
                        % (len(body), body))

    async def run(self, n: int, latencies: list[float]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        for _ in range(n):
            t = time.perf_counter()
            writer.write(self.request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
            latencies.append(time.perf_counter() - t)
            if head[9:12] != b"200":
                raise RuntimeError(f"{head[:12]!r}: {body[:300]!r}")
        writer.close()


def start_proxy(tmp: Path, node: str, src: Path) -> tuple[subprocess.Popen[bytes], int, bytes]:
    port, ops = free_port(), free_port()
    env = {**os.environ, "INFERNO_PROXY_DATA_DIR": str(tmp), "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, "-m", "inferno", "keys", "create", "--name", "bench",
                          "--rpm", "10000000", "--tpm", "1000000000"],
                         env=env, check=True, capture_output=True)
    auth = b"authorization: Bearer " + out.stdout.strip() + b"\r\n"
    proc = subprocess.Popen([sys.executable, "-m", "inferno", "proxy", "--backends", node,
                             "--port", str(port), "--ops-port", str(ops), "--auth", "on",
                             "--log-level", "warning"], env=env)
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.1)
    time.sleep(2.5)  # the static node passes its first probes and health checks
    return proc, port, auth


async def measure(pid: int, port: int, auth: bytes, api: str, n: int, conc: int
                  ) -> tuple[float, float]:
    path, body = APIS[api]
    raw = json.dumps(body).encode()
    latencies: list[float] = []
    cpu0 = cpu_seconds(pid)
    await asyncio.gather(*(Client(port, auth, path, raw).run(n // conc, latencies)
                           for _ in range(conc)))
    return (cpu_seconds(pid) - cpu0) / len(latencies), statistics.median(latencies)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--baseline-src", type=Path, default=None)
    ap.add_argument("--only", default=",".join(APIS),
                    help="the APIs to measure on this tree (comma-separated)")
    a = ap.parse_args()
    node_port, node_ops = free_port(), free_port()
    servers = await fake_node(node_port, node_ops)
    node = f"127.0.0.1:{node_port}/{node_ops}"
    targets = [("this", SRC, [x for x in a.only.split(",") if x in APIS])]
    if a.baseline_src is not None:
        targets.append(("base", a.baseline_src.resolve(), ["chat"]))
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for name, src, _ in targets:
            (Path(tmp) / name).mkdir()
            procs.append(await asyncio.to_thread(start_proxy, Path(tmp) / name, node, src))
        try:
            for (_, _, apis), (proc, port, auth) in zip(targets, procs, strict=True):
                for api in apis:  # warm up
                    await measure(proc.pid, port, auth, api, 400, a.concurrency)
            for i in range(a.rounds):
                pairs = list(zip(targets, procs, strict=True))
                if i % 2:  # alternate which proxy goes first: no order bias
                    pairs.reverse()
                for (name, _, apis), (proc, port, auth) in pairs:
                    for api in apis:
                        results.setdefault((name, api), []).append(await measure(
                            proc.pid, port, auth, api, a.requests, a.concurrency))
        finally:
            for proc, _, _ in procs:
                proc.terminate()
                proc.wait(30)
    for server in servers:
        server.close()
    # The fake node's handlers see the proxies' connections close and finish.
    await asyncio.sleep(0.5)
    chat_cpu = statistics.median(c for c, _ in results[("this", "chat")])
    chat_lat = statistics.median(lt for _, lt in results[("this", "chat")])
    lines = [f"{a.rounds} rounds x {a.requests} requests, concurrency {a.concurrency}, "
             "medians over rounds",
             f"{'proxy':6s} {'api':16s} {'CPU ms/req':>10s} {'x chat':>7s} {'p50 ms':>8s} "
             f"{'x chat':>7s}"]
    for (name, api), rows in results.items():
        cpu = statistics.median(c for c, _ in rows)
        lat = statistics.median(lt for _, lt in rows)
        lines.append(f"{name:6s} {api:16s} {cpu * 1e3:10.3f} {cpu / chat_cpu:7.2f} "
                     f"{lat * 1e3:8.3f} {lat / chat_lat:7.2f}")
    print("\n".join(lines))
    out = Path(__file__).parent / "results" / time.strftime("api-translation-%Y%m%dT%H%M%SZ.txt",
                                                            time.gmtime())
    out.write_text("\n".join(lines) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    asyncio.run(main())
