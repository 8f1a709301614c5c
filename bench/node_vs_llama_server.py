"""The node against llama.cpp's own C++ ``llama-server``: same GGUF, same threads, same load.

For each thread count (``--threads``, default 1, 2 and all cores) both servers run side by
side (``inferno backend`` with the model as shipped and the engine settings a user gets, and
``llama-server -np P``), and each round sends, to one then the other (the order alternates
by round), bursts of 1, 4, 8 and 16 simultaneous streaming completions of 64 greedy tokens
on distinct ~20-token prompts. Per burst: aggregate completion tokens/s (all tokens over
the time until the last stream ends), time to first token p50/p95, inter-token latency
p50 (gaps between streamed tokens), and each server's RSS. Ratios node/llama-server are
taken inside each round, then the median over rounds.

    .venv/bin/python bench/node_vs_llama_server.py [--threads 1 2] [--streams 1 4 8 16]
        [--rounds 3] [--node-args '--quantize q8_0']
        [--llama-server ../shared/tools/llama-server/llama-server]

llama-server is not part of Inferno (see ../shared/tools/llama-server/README.md for how it
is built from the llama.cpp that llama-cpp-python vendors). Results go to
``bench/results/node_vs_llama_server-<UTC>.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llamacpp_batching as lb  # the subprocess and prompt helpers

ROOT = Path(__file__).resolve().parent.parent
MAX_TOKENS = 64


@dataclass
class Stream:
    tokens: int = 0
    ttft: float = 0.0
    gaps: list[float] = field(default_factory=list)
    error: str = ""


async def stream(session: Any, url: str, text: str) -> Stream:
    body = {"model": "smollm2-135m", "prompt": text, "max_tokens": MAX_TOKENS,
            "temperature": 0, "stream": True, "ignore_eos": True}
    s = Stream()
    t0 = last = time.perf_counter()
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                s.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return s
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                event = json.loads(data)
                choices = event.get("choices") or [{}]
                if choices[0].get("text"):
                    now = time.perf_counter()
                    if s.tokens == 0:
                        s.ttft = now - t0
                    else:
                        s.gaps.append(now - last)
                    last = now
                    s.tokens += 1
    except Exception as exc:  # a bench records failures, it does not stop
        s.error = f"{type(exc).__name__}: {exc}"
    return s


async def burst(url: str, n: int, first: int) -> dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        t0 = time.perf_counter()
        streams = await asyncio.gather(*(stream(session, url, lb.prompt(first + i))
                                         for i in range(n)))
        wall = time.perf_counter() - t0
    ttfts = sorted(s.ttft for s in streams if s.tokens)
    gaps = [g for s in streams for g in s.gaps]
    return {"tok_s": sum(s.tokens for s in streams) / wall,
            "ttft_p50": statistics.median(ttfts) if ttfts else None,
            "ttft_p95": ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))] if ttfts else None,
            "itl_p50": statistics.median(gaps) if gaps else None,
            "tokens": [s.tokens for s in streams],
            "errors": [s.error for s in streams if s.error]}


def servers(threads: int, parallel: int, n_ctx: int, binary: Path, model: Path,
            logs: Path, node_args: list[str]) -> tuple[lb.Server, lb.Server]:
    port, ops = lb.free_port(), lb.free_port()
    node = lb.Server("inferno backend", [
        sys.executable, "-m", "inferno", "backend", "--port", str(port), "--ops-port",
        str(ops), "--threads", str(threads), "--parallel", str(parallel), "--n-ctx",
        str(n_ctx), "--node-id", "bench", "--log-level", "warning", *node_args,
    ], port, f"http://127.0.0.1:{ops}/health", logs / f"node-t{threads}.log")
    sport = lb.free_port()
    env_lib = str(binary.parent)
    server = lb.Server("llama-server", [
        "env", f"LD_LIBRARY_PATH={env_lib}", str(binary), "-m", str(model), "--host",
        "127.0.0.1", "--port", str(sport), "-t", str(threads), "-tb", str(threads),
        "-np", str(parallel), "-c", str(n_ctx * parallel), "--no-webui", "-a", "smollm2-135m",
    ], sport, f"http://127.0.0.1:{sport}/health", logs / f"llama-server-t{threads}.log")
    return node, server


def rss_mb(srv: lb.Server) -> float:
    assert srv.popen is not None
    pids = [srv.popen.pid]
    # llama-server runs under `env`, which execs it: the same pid.
    return sum(lb.vm_kib(p, "VmRSS") for p in pids) / 1024


def run(a: argparse.Namespace) -> dict[str, Any]:
    from inferno.models.catalog import resolve_model

    model = resolve_model("smollm2-135m").path
    logs = ROOT / "bench" / "results" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"model": str(model.name), "threads": {}, "pressure": []}
    nonce = int(time.time()) % 100_000 * 100
    for threads in a.threads:
        node, server = servers(threads, max(a.streams), a.n_ctx, a.llama_server, model, logs,
                               a.node_args.split())
        rows: dict[str, list[dict[str, Any]]] = {}
        try:
            node.start(300)
            server.start(120)
            for warm in (node, server):  # first requests pay one-time costs
                asyncio.run(burst(f"http://127.0.0.1:{warm.port}/v1/completions", 2, 0))
            for r in range(a.rounds):
                out["pressure"].append(lb.cpu_pressure())
                order = (node, server) if r % 2 == 0 else (server, node)
                for n in a.streams:
                    for srv in order:
                        nonce += n
                        b = burst(f"http://127.0.0.1:{srv.port}/v1/completions", n, nonce)
                        res = asyncio.run(b)
                        res["rss_mb"] = rss_mb(srv)
                        rows.setdefault(f"{srv.name}|{n}", []).append(res)
                        print(f"t={threads} round {r + 1} {srv.name:<16} {n:>2} streams "
                              f"{res['tok_s']:6.1f} tok/s  TTFT p50 "
                              f"{1000 * (res['ttft_p50'] or 0):6.0f} ms  errors "
                              f"{len(res['errors'])}", flush=True)
        finally:
            node.stop()
            server.stop()
        out["threads"][threads] = rows
    return out


def median(xs: list[float | None]) -> float:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else float("nan")


def report(res: dict[str, Any], a: argparse.Namespace) -> str:
    lines = [f"# Node{' (' + a.node_args + ')' if a.node_args else ''} vs llama-server "
             f"({res['model']}, {MAX_TOKENS} tokens greedy, "
             f"{a.rounds} rounds, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"CPU pressure (some avg10) per round: {res['pressure']}", "",
             "| threads | streams | node tok/s | llama-server tok/s | aggregate ratio | "
             "TTFT p50 node / server ms | TTFT ratio | TTFT p95 node / server ms | "
             "ITL p50 node / server ms | RSS node / server MB |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for threads, rows in res["threads"].items():
        for n in a.streams:
            nd, sv = rows[f"inferno backend|{n}"], rows[f"llama-server|{n}"]
            ratio = median([x["tok_s"] / y["tok_s"] for x, y in zip(nd, sv, strict=True)])
            tt = median([x["ttft_p50"] / y["ttft_p50"] for x, y in zip(nd, sv, strict=True)
                         if x["ttft_p50"] and y["ttft_p50"]])

            def ms(rs: list[dict[str, Any]], key: str) -> float:
                return 1000 * median([r[key] for r in rs])
            lines.append(
                f"| {threads} | {n} | {median([r['tok_s'] for r in nd]):.1f} | "
                f"{median([r['tok_s'] for r in sv]):.1f} | **{ratio:.2f}x** | "
                f"{ms(nd, 'ttft_p50'):.0f} / {ms(sv, 'ttft_p50'):.0f} | {tt:.2f}x | "
                f"{ms(nd, 'ttft_p95'):.0f} / {ms(sv, 'ttft_p95'):.0f} | "
                f"{ms(nd, 'itl_p50'):.1f} / {ms(sv, 'itl_p50'):.1f} | "
                f"{median([r['rss_mb'] for r in nd]):.0f} / "
                f"{median([r['rss_mb'] for r in sv]):.0f} |")
    errors = sum(len(r["errors"]) for rows in res["threads"].values() for rs in rows.values()
                 for r in rs)
    lines += ["", f"Request errors: {errors}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+",
                    default=sorted({1, min(2, os.cpu_count() or 1), os.cpu_count() or 1}))
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n-ctx", type=int, default=512, help="context per sequence")
    ap.add_argument("--node-args", default="",
                    help="more `inferno backend` arguments, e.g. '--quantize q8_0'")
    ap.add_argument("--llama-server", type=Path,
                    default=ROOT.parent / "shared" / "tools" / "llama-server" / "llama-server")
    a = ap.parse_args()
    if not a.llama_server.exists():
        sys.exit(f"llama-server not found at {a.llama_server} (--llama-server PATH)")
    res = run(a)
    text = report(res, a)
    print("\n" + text)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = ROOT / "bench" / "results" / f"node_vs_llama_server-{stamp}.md"
    path.write_text(text)
    (path.with_suffix(".json")).write_text(json.dumps(res, indent=1))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
