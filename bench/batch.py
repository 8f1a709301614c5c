"""The Batch API: validation of a large input, batch throughput, interactive TTFT.

Runs ``inferno proxy`` and one fake node (``inferno backend --engine fake``, each token
``--token-delay`` apart) as child processes on 127.0.0.1, in a temporary directory:

1. **validation**: a 50,000-line, ~200 MB JSONL file is uploaded (streamed) and a batch
   created with the proxy's workers off; reported: seconds from create to ``in_progress``
   and the proxy's peak RSS growth (VmHWM from /proc, before the upload vs after validation,
   of the proxy process that grew most: with several workers, the one that took the upload);
2. **throughput**: N requests sent straight to the proxy by a client at concurrency C (the
   baseline), then the same N requests as a batch with C in-proxy workers (items per second
   from ``in_progress_at`` to the last item done); the ratio batch / direct;
3. **interactive TTFT**: streamed requests from one closed-loop client, p50/p95 time to the
   first chunk, alone and while a batch runs at full speed; the p95 ratio.

    .venv/bin/python bench/batch.py [--lines 50000] [--requests 2000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson

from inferno.net import HttpClient

MODEL = "fake-model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_hwm_kib(pid: int) -> dict[int, int]:
    """VmHWM of ``pid`` and of every process under it (the workers of ``--workers N``)."""
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        try:
            out[p] = hwm_kib(p)
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except (OSError, ValueError):
            continue
    return out


def hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


class Stack:
    def __init__(self, tmp: Path, *, workers: int, parallel: int, delay: float) -> None:
        self.port, self.ops = free_port(), free_port()
        env = {**os.environ, "INFERNO_PROXY_DATA_DIR": str(tmp / "data"),
               "INFERNO_BATCH_WORKERS": str(workers)}
        env.pop("INFERNO_DATABASE_URL", None)
        tmp.mkdir(parents=True, exist_ok=True)
        log = (tmp / "stack.log").open("ab")
        py = [sys.executable, "-m", "inferno"]
        self.procs = [
            subprocess.Popen([*py, "proxy", "--port", str(self.port), "--ops-port",
                              str(self.ops), "--ops-health", "loop", "--log-level", "warning"],
                             env=env, stdout=log, stderr=log, start_new_session=True),
            subprocess.Popen([*py, "backend", "--engine", "fake", "--served-name", MODEL,
                              "--port", str(free_port()), "--ops-port", str(free_port()),
                              "--parallel", str(parallel), "--n-ctx", "100000",
                              "--fake-token-delay", str(delay), "--discovery-lb",
                              f"127.0.0.1:{self.ops}", "--log-level", "warning"],
                             env=env, stdout=log, stderr=log, start_new_session=True)]
        self.url = f"http://127.0.0.1:{self.port}/v1"

    @property
    def proxy_pid(self) -> int:
        return self.procs[0].pid

    async def ready(self, http: httpx.AsyncClient) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                r = await http.get(f"{self.url}/models")
                if r.status_code == 200 and any(m["id"] == MODEL for m in r.json()["data"]):
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError("the stack did not come up")

    def stop(self) -> None:
        for p in self.procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def body(i: int, max_tokens: int, text: str = "") -> dict[str, Any]:
    return {"model": MODEL, "prompt": f"request {i} {text}", "max_tokens": max_tokens}


def paragraphs(size: int, n: int = 1000) -> list[str]:
    """Text that compresses like prose (~3x), not like padding: random words drawn from
    a 2,000-word vocabulary, ``n`` different paragraphs (4 MB: wider than zstd's window)."""
    rng = random.Random(1)
    vocab = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9)))
             for _ in range(2000)]
    out = []
    for _ in range(n):
        words: list[str] = []
        length = 0
        while length < size:
            w = rng.choice(vocab)
            words.append(w)
            length += len(w) + 1
        out.append(" ".join(words))
    return out


def write_input(path: Path, n: int, max_tokens: int, pad: int = 0) -> int:
    texts = paragraphs(pad) if pad else [""]
    with path.open("wb") as f:
        for i in range(n):
            f.write(orjson.dumps({"custom_id": f"r{i}", "method": "POST",
                                  "url": "/v1/completions",
                                  "body": body(i, max_tokens, texts[i % len(texts)])}) + b"\n")
    return path.stat().st_size


async def submit(http: httpx.AsyncClient, url: str, path: Path) -> str:
    with path.open("rb") as f:
        r = await http.post(f"{url}/files", data={"purpose": "batch"},
                            files={"file": (path.name, f, "application/jsonl")})
    r.raise_for_status()
    r = await http.post(f"{url}/batches", json={"input_file_id": r.json()["id"],
                                                 "endpoint": "/v1/completions"})
    r.raise_for_status()
    return str(r.json()["id"])


async def wait_for(http: httpx.AsyncClient, url: str, batch_id: str,
                   statuses: tuple[str, ...], every: float = 0.05) -> dict[str, Any]:
    while True:
        b = (await http.get(f"{url}/batches/{batch_id}")).json()
        if b["status"] in statuses:
            return b  # type: ignore[no-any-return]
        await asyncio.sleep(every)


async def validation(tmp: Path, lines: int) -> dict[str, float]:
    stack = Stack(tmp / "v", workers=0, parallel=4, delay=0.0)
    path = tmp / "big.jsonl"
    size = write_input(path, lines, 16, pad=3900)  # ~4 KB a line
    try:
        async with httpx.AsyncClient(timeout=600) as http:
            await stack.ready(http)
            before = tree_hwm_kib(stack.proxy_pid)
            t0 = time.monotonic()
            batch_id = await submit(http, stack.url, path)
            t_created = time.monotonic()
            b = await wait_for(http, stack.url, batch_id, ("in_progress", "failed"))
            t_valid = time.monotonic()
            after = tree_hwm_kib(stack.proxy_pid)
        assert b["status"] == "in_progress", b.get("errors")
        assert b["request_counts"]["total"] == lines
        return {"lines": lines, "mb": size / 1e6, "upload_s": t_created - t0,
                "validate_s": t_valid - t_created,
                # The process that took the upload and validated it grew the most.
                "rss_growth_mb": max(after[p] - before.get(p, 0) for p in after) / 1024}
    finally:
        stack.stop()
        path.unlink(missing_ok=True)


async def direct(url: str, n: int, concurrency: int, max_tokens: int) -> float:
    client = HttpClient()
    port = int(url.split(":")[2].split("/")[0])
    queue = iter(range(n))

    async def loop() -> None:
        for i in queue:
            resp = await client.request("127.0.0.1", port, "POST", "/v1/completions",
                                        headers=[(b"content-type", b"application/json")],
                                        body=orjson.dumps(body(i, max_tokens)))
            await resp.read()
            assert resp.status == 200, resp.status

    t0 = time.monotonic()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    took = time.monotonic() - t0
    await client.aclose()
    return n / took


async def batch_rate(http: httpx.AsyncClient, url: str, path: Path) -> float:
    """Items per second from the batch being seen in progress to it being seen finalising
    (polled every 20 ms: the API's timestamps are whole seconds)."""
    batch_id = await submit(http, url, path)
    await wait_for(http, url, batch_id, ("in_progress",), every=0.02)
    t0 = time.monotonic()
    b = await wait_for(http, url, batch_id, ("finalizing", "completed", "failed"), every=0.02)
    took = time.monotonic() - t0
    b = await wait_for(http, url, batch_id, ("completed", "failed"))
    assert b["status"] == "completed" and b["request_counts"]["failed"] == 0, b
    return float(b["request_counts"]["completed"]) / took


async def ttfts(url: str, seconds: float, max_tokens: int) -> list[float]:
    client = HttpClient()
    port = int(url.split(":")[2].split("/")[0])
    out: list[float] = []
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        i += 1
        t0 = time.perf_counter()
        resp = await client.request(
            "127.0.0.1", port, "POST", "/v1/completions",
            headers=[(b"content-type", b"application/json")],
            body=orjson.dumps({**body(-i, max_tokens), "stream": True}))
        first = True
        async for _chunk in resp.iter_chunks():
            if first:
                out.append((time.perf_counter() - t0) * 1000)
                first = False
    await client.aclose()
    return out


def p95(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=20)[18] if len(xs) >= 20 else max(xs)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=50_000)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--token-delay", type=float, default=0.01)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--ttft-seconds", type=float, default=15.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-validation", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="inferno-bench-batch-") as d:
        tmp = Path(d)
        if not a.skip_validation:
            v = await validation(tmp, a.lines)
            print(f"validation: {v['lines']} lines, {v['mb']:.0f} MB: upload "
                  f"{v['upload_s']:.1f} s, validation {v['validate_s']:.1f} s, proxy peak RSS "
                  f"growth {v['rss_growth_mb']:.0f} MB", flush=True)
        # The node's capacity equals the workers' count: the batch may fill the node.
        stack = Stack(tmp / "t", workers=a.concurrency, parallel=a.concurrency,
                      delay=a.token_delay)
        try:
            async with httpx.AsyncClient(timeout=600) as http:
                await stack.ready(http)
                path = tmp / "t.jsonl"
                write_input(path, a.requests, a.max_tokens)
                await direct(stack.url, 200, a.concurrency, a.max_tokens)  # warm-up
                rates = []
                for _ in range(0 if a.skip_throughput else a.rounds):  # interleaved rounds
                    d_rate = await direct(stack.url, a.requests, a.concurrency, a.max_tokens)
                    # The proxy keeps room for interactive traffic until 2 s after the last
                    # interactive request: the batch below would otherwise start in it.
                    await asyncio.sleep(2.5)
                    b_rate = await batch_rate(http, stack.url, path)
                    rates.append((d_rate, b_rate))
                    print(f"throughput: direct {d_rate:.0f} req/s, batch {b_rate:.0f} items/s,"
                          f" ratio {b_rate / d_rate:.2f}", flush=True)
                # Alternating windows, alone and beside a running batch, so the machine's
                # other load falls on both alike.
                big = tmp / "ttft.jsonl"
                write_input(big, 20_000, a.max_tokens)  # more than runs in one window
                alone: list[float] = []
                busy: list[float] = []
                done = 0
                for _ in range(a.rounds):
                    await asyncio.sleep(2.5)  # the interactive reserve lapses
                    alone += await ttfts(stack.url, a.ttft_seconds / a.rounds, 4)
                    batch_id = await submit(http, stack.url, big)
                    b = await wait_for(http, stack.url, batch_id, ("in_progress", "failed"))
                    assert b["status"] == "in_progress", b["errors"]
                    busy += await ttfts(stack.url, a.ttft_seconds / a.rounds, 4)
                    r = await http.post(f"{stack.url}/batches/{batch_id}/cancel")
                    done += r.json()["request_counts"]["completed"]
                    await wait_for(http, stack.url, batch_id, ("cancelled",))
            print(f"TTFT alone: p50 {statistics.median(alone):.1f} ms, p95 {p95(alone):.1f} ms"
                  f" ({len(alone)} requests)")
            print(f"TTFT with a batch running ({done} items done meanwhile): p50 "
                  f"{statistics.median(busy):.1f} ms, p95 {p95(busy):.1f} ms "
                  f"({len(busy)} requests); p95 ratio {p95(busy) / p95(alone):.2f}")
            ratios = [b / d for d, b in rates] or [float("nan")]
            print(f"throughput ratio (median of {len(ratios)}): {statistics.median(ratios):.2f}")
        finally:
            stack.stop()


if __name__ == "__main__":
    asyncio.run(main())
