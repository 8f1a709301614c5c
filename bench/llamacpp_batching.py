"""The llama.cpp engine's batching benchmark. Not a test: rerun it.

    make bench-engine                     # or:
    .venv/bin/python bench/llamacpp_batching.py --threads 1 --quantize q8_0 --rounds 5

One run, on loopback, SmolLM2-135M, every contender at the same thread count:

  A  ``llama_cpp.Llama.create_completion`` in this process (the same GGUF the node loads;
     plus the shipped Q4_1 file for reference when the node serves a converted copy);
  B  ``inferno backend`` (a subprocess), one streaming client, then 8 at once;
  C  ``python -m llama_cpp.server --interrupt_requests False`` (a subprocess), one
     streaming client, then 8 at once;
  D  time to first token for 8 chat requests at once (``/v1/chat/completions``, 8
     different questions, the chat template's default system prompt), on B (prompt-prefix
     reuse on) right after its completion burst ("cold": the slots hold other prompts)
     and again at once ("warm"), and on a second node started with --no-prefix-cache;
     the order of the reuse and no-reuse bursts alternates by round.

Rounds are interleaved (A, B1, B8, C1, C8, A, ...) so background load hits every contender
alike; each ratio is computed inside a round and the table shows the median round and
the spread. tokens/s is completion tokens over the request's whole wall time (prompt
included); with 8 clients it is all tokens over the time until the last one ends. Time to
first token: request sent -> first SSE event carrying text. RSS: VmRSS of the node
after load, and its VmHWM at the end. Results: bench/results/llamacpp_batching.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CLIENTS = 8
# Raw continuations (/v1/completions), one per client, each starting with a number unique
# to the run, so that no contender's prefix reuse (create_completion, llama_cpp.server's
# slot, the node's prefix cache) can skip a whole prompt; greedy output runs long on these.
TOPICS = ("a lighthouse keeper", "a lost robot", "a dragon who bakes bread", "two rival chefs",
          "a city under the sea", "a time-travelling cat", "the last library", "a moon garden")


# Chat (D): short questions, so the ~30-token default system prompt is most of each prompt.
QUESTIONS = ("What is the capital of France?", "Name three colours.", "How do bees make honey?",
             "Why is the sky blue?", "Give me a word that rhymes with cat.",
             "What is 12 times 7?", "Suggest a name for a goldfish.", "How far is the moon?")
WARM = ("What is the capital of Spain?", "Name three animals.", "How do birds fly?",
        "Why is grass green?", "Give me a word that rhymes with dog.", "What is 9 times 6?",
        "Suggest a name for a cat.", "How hot is the sun?")
CHAT_MAX_TOKENS = 16


def prompt(i: int) -> str:
    return (f"Story {i}. Here is a long, detailed story about {TOPICS[i % len(TOPICS)]}."
            "\n\nOnce upon a time")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def vm_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def cpu_pressure() -> float | None:
    """/proc/pressure/cpu "some" avg10: the share of time something waited for a CPU."""
    try:
        return float(Path("/proc/pressure/cpu").read_text().split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        return None


# ---- subprocesses -----------------------------------------------------------------------

@dataclass
class Server:
    name: str
    argv: list[str]
    port: int
    ready_url: str
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float) -> None:
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(self.ready_url,
                                                                      timeout=1) as r:
                if r.status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready in {timeout:.0f} s: "
                           f"{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


# ---- HTTP streaming client ----------------------------------------------------------------

@dataclass
class Req:
    tokens: int = 0
    ttft: float = 0.0
    total: float = 0.0
    error: str = ""


async def stream_one(session: Any, url: str, model: str, text: str, max_tokens: int) -> Req:
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": 0,
                            "stream": True, "stream_options": {"include_usage": True}}
    chat = url.endswith("/chat/completions")
    if chat:
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = text
    r = Req()
    chunks = 0
    t0 = time.perf_counter()
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                r.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return r
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                event = json.loads(data)
                choice = event["choices"][0] if event.get("choices") else {}
                if choice.get("delta", {}).get("content") if chat else choice.get("text"):
                    chunks += 1
                    if not r.ttft:
                        r.ttft = time.perf_counter() - t0
                usage = event.get("usage")
                if usage:
                    r.tokens = int(usage["completion_tokens"])
    except Exception as exc:  # a bench records failures, it does not stop
        r.error = f"{type(exc).__name__}: {exc}"
    r.total = time.perf_counter() - t0
    # llama_cpp.server sends no usage event while streaming: one text chunk = one token.
    r.tokens = r.tokens or chunks
    return r


async def burst(url: str, model: str, n: int, max_tokens: int, first: int,
                questions: tuple[str, ...] = ()) -> dict[str, Any]:
    import aiohttp

    texts = [questions[(first + i) % len(questions)] if questions else prompt(first + i)
             for i in range(n)]
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        t0 = time.perf_counter()
        reqs = await asyncio.gather(*(stream_one(session, url, model, text, max_tokens)
                                      for text in texts))
        wall = time.perf_counter() - t0
    errors = [r.error for r in reqs if r.error]
    tokens = sum(r.tokens for r in reqs)
    return {"tok_s": tokens / wall, "tokens": tokens, "wall_s": wall,
            "ttft_s": [r.ttft for r in reqs if r.ttft], "errors": errors}


# ---- in-process baseline --------------------------------------------------------------------

class InProcess:
    def __init__(self, path: Path, threads: int, n_ctx: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads,
                         n_threads_batch=threads, verbose=False)

    def run(self, i: int, max_tokens: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        out: Any = self.llm.create_completion(prompt(i), max_tokens=max_tokens, temperature=0)
        wall = time.perf_counter() - t0
        tokens = int(out["usage"]["completion_tokens"])
        return {"tok_s": tokens / wall, "tokens": tokens, "wall_s": wall}


# ---- the run --------------------------------------------------------------------------------

@dataclass
class Run:
    args: argparse.Namespace
    rounds: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def model_paths(quantize: str, data_dir: Path) -> tuple[Path, Path]:
    from inferno.models.catalog import resolve_model
    from inferno.models.quantize import ensure_quantized

    native = resolve_model("smollm2-135m").path
    return native, ensure_quantized(native, quantize, data_dir, status=print)


def inferno_node(a: argparse.Namespace, name: str, log: Path, *extra: str) -> Server:
    port, ops_port = free_port(), free_port()
    return Server(name, [
        sys.executable, "-m", "inferno", "backend", "--port", str(port),
        "--ops-port", str(ops_port), "--threads", str(a.threads), "--parallel", str(CLIENTS),
        "--n-ctx", str(a.n_ctx), "--quantize", a.quantize, "--data-dir", str(a.data_dir),
        "--node-id", name.replace(" ", "-"), "--log-level", "warning", *extra,
    ], port, f"http://127.0.0.1:{ops_port}/health", log)


@contextlib.contextmanager
def servers(a: argparse.Namespace, path: Path,
            logs: Path) -> Iterator[tuple[Server, Server, Server]]:
    srv_port = free_port()
    py = sys.executable
    node = inferno_node(a, "inferno backend", logs / "node.log")
    plain = inferno_node(a, "inferno backend no-prefix-cache", logs / "node_no_prefix_cache.log",
                         "--no-prefix-cache")
    srv = Server("llama_cpp.server", [
        py, "-m", "llama_cpp.server", "--model", str(path), "--model_alias", "bench",
        "--host", "127.0.0.1", "--port", str(srv_port), "--n_threads", str(a.threads),
        "--n_threads_batch", str(a.threads), "--n_ctx", str(a.n_ctx),
        "--interrupt_requests", "False",
    ], srv_port, f"http://127.0.0.1:{srv_port}/v1/models", logs / "llama_cpp_server.log")
    try:
        node.start(180)
        plain.start(180)
        srv.start(120)
        yield node, srv, plain
    finally:
        node.stop()
        plain.stop()
        srv.stop()


def measure(a: argparse.Namespace) -> Run:
    run = Run(a)
    native, path = model_paths(a.quantize, a.data_dir)
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    run.meta = {"model": _shown(path), "native_model": _shown(native), "threads": a.threads,
                "quantize": a.quantize, "max_tokens": a.max_tokens, "clients": CLIENTS,
                "n_ctx": a.n_ctx, "cpus": os.cpu_count(), "pressure_start": cpu_pressure()}
    same = InProcess(path, a.threads, a.n_ctx)
    ref = InProcess(native, a.threads, a.n_ctx) if path != native else None
    nonce = 1000 * (int(time.time()) % 100_000)  # unique prompts per run, see prompt()
    with servers(a, path, logs) as (node, srv, plain):
        assert node.popen is not None
        run.meta["node_rss_loaded_mb"] = vm_kib(node.popen.pid, "VmRSS") / 1024
        node_url = f"http://127.0.0.1:{node.port}/v1/completions"
        srv_url = f"http://127.0.0.1:{srv.port}/v1/completions"
        chat_url = f"http://127.0.0.1:{node.port}/v1/chat/completions"
        plain_url = f"http://127.0.0.1:{plain.port}/v1/chat/completions"
        # Warm-up: first requests pay page faults and thread start-up everywhere.
        same.run(nonce, 8)
        asyncio.run(burst(node_url, "smollm2-135m", CLIENTS, 8, nonce))
        asyncio.run(burst(plain_url, "smollm2-135m", CLIENTS, 8, 0, QUESTIONS))
        asyncio.run(burst(srv_url, "bench", 1, 8, nonce))
        started = time.monotonic()
        for rnd in range(a.rounds):
            if rnd and time.monotonic() - started > a.budget:
                print(f"time budget ({a.budget:.0f} s) spent after {rnd} rounds")
                break
            row: dict[str, Any] = {"pressure": cpu_pressure()}
            first = nonce + 100 * (rnd + 1)
            row["inproc"] = same.run(first, a.max_tokens)
            if ref is not None:
                row["inproc_native"] = ref.run(first, a.max_tokens)
            row["node_1"] = asyncio.run(burst(node_url, "smollm2-135m", 1, a.max_tokens,
                                              first + 50))
            row["node_8"] = asyncio.run(burst(node_url, "smollm2-135m", CLIENTS,
                                              a.max_tokens, first))
            # D: chat bursts, reuse on (cold, then warm: other questions, so that no slot
            # holds the very same prompt) and off; alternate which node goes first.
            jobs = [[("chat8_cold", chat_url, QUESTIONS), ("chat8_warm", chat_url, WARM)],
                    [("chat8_plain", plain_url, QUESTIONS)]]
            for key, url, questions in [j for group in jobs[:: 1 if rnd % 2 == 0 else -1]
                                        for j in group]:
                row[key] = asyncio.run(burst(url, "smollm2-135m", CLIENTS, CHAT_MAX_TOKENS,
                                             rnd, questions))
            row["server_1"] = asyncio.run(burst(srv_url, "bench", 1, a.max_tokens, rnd))
            row["server_8"] = asyncio.run(burst(srv_url, "bench", CLIENTS, a.max_tokens, rnd))
            run.rounds.append(row)
            print(f"round {rnd + 1}: inproc {row['inproc']['tok_s']:.0f}  node1 "
                  f"{row['node_1']['tok_s']:.0f}  node8 {row['node_8']['tok_s']:.0f}  "
                  f"server1 {row['server_1']['tok_s']:.0f}  server8 "
                  f"{row['server_8']['tok_s']:.0f} tok/s; chat TTFT p50 reuse cold "
                  f"{p50_ms(row['chat8_cold']):.0f} warm {p50_ms(row['chat8_warm']):.0f} "
                  f"no-reuse {p50_ms(row['chat8_plain']):.0f} ms  "
                  f"(cpu pressure {row['pressure']})", flush=True)
        run.meta["node_rss_peak_mb"] = vm_kib(node.popen.pid, "VmHWM") / 1024
    run.meta["pressure_end"] = cpu_pressure()
    return run


# ---- report ---------------------------------------------------------------------------------

def p50_ms(b: dict[str, Any]) -> float:
    return 1000 * statistics.median(b["ttft_s"]) if b["ttft_s"] else float("nan")


def ttft_ms(rs: list[dict[str, Any]], key: str) -> dict[str, float | None]:
    """p50/p90 over every request of every round, and the per-round p50 spread."""
    ts = sorted(t for r in rs for t in r[key]["ttft_s"])
    if not ts:
        return {"p50": None, "p90": None, "round_min": None, "round_max": None}
    rounds = [p50_ms(r[key]) for r in rs]
    return {"p50": 1000 * statistics.median(ts), "p90": 1000 * ts[int(0.9 * (len(ts) - 1))],
            "round_min": min(rounds), "round_max": max(rounds)}


def summarize(run: Run) -> dict[str, Any]:
    rs = run.rounds
    med = statistics.median

    def per_round(f: Any) -> dict[str, float]:
        vals = [f(r) for r in rs]
        return {"median": med(vals), "min": min(vals), "max": max(vals)}

    ttft8 = sorted(t for r in rs for t in r["node_8"]["ttft_s"])
    errors = [e for r in rs for k in ("node_1", "node_8", "server_1", "server_8",
                                      "chat8_cold", "chat8_warm", "chat8_plain")
              for e in r[k]["errors"]]
    s: dict[str, Any] = {
        "rounds": len(rs),
        "inproc_tok_s": per_round(lambda r: r["inproc"]["tok_s"]),
        "node_1_tok_s": per_round(lambda r: r["node_1"]["tok_s"]),
        "node_8_tok_s": per_round(lambda r: r["node_8"]["tok_s"]),
        "server_1_tok_s": per_round(lambda r: r["server_1"]["tok_s"]),
        "server_8_tok_s": per_round(lambda r: r["server_8"]["tok_s"]),
        "node1_over_inproc": per_round(lambda r: r["node_1"]["tok_s"] / r["inproc"]["tok_s"]),
        "node8_over_node1": per_round(lambda r: r["node_8"]["tok_s"] / r["node_1"]["tok_s"]),
        "node8_over_server8": per_round(
            lambda r: r["node_8"]["tok_s"] / r["server_8"]["tok_s"]),
        "ttft8_p50_ms": 1000 * med(ttft8) if ttft8 else None,
        "ttft8_p90_ms": 1000 * ttft8[int(0.9 * (len(ttft8) - 1))] if ttft8 else None,
        "ttft": {k: ttft_ms(rs, k) for k in ("node_8", "chat8_cold", "chat8_warm",
                                             "chat8_plain")},
        "node_rss_loaded_mb": run.meta["node_rss_loaded_mb"],
        "node_rss_peak_mb": run.meta["node_rss_peak_mb"],
        "errors": errors,
    }
    if rs and "inproc_native" in rs[0]:
        s["inproc_native_tok_s"] = per_round(lambda r: r["inproc_native"]["tok_s"])
        s["node1_over_inproc_native"] = per_round(
            lambda r: r["node_1"]["tok_s"] / r["inproc_native"]["tok_s"])
        s["node8_over_inproc_native"] = per_round(
            lambda r: r["node_8"]["tok_s"] / r["inproc_native"]["tok_s"])
    s["targets"] = [
        ("single stream: node HTTP / create_completion", s["node1_over_inproc"]["median"],
         ">= 0.95", s["node1_over_inproc"]["median"] >= 0.95),
        ("8 clients: node aggregate / node single", s["node8_over_node1"]["median"],
         ">= 1.8", s["node8_over_node1"]["median"] >= 1.8),
        ("8 clients: node / llama_cpp.server", s["node8_over_server8"]["median"],
         ">= 1.8", s["node8_over_server8"]["median"] >= 1.8),
        ("8 clients: time to first token p50 (ms)", s["ttft8_p50_ms"], "<= 300",
         s["ttft8_p50_ms"] is not None and s["ttft8_p50_ms"] <= 300),
        ("8 chat clients, prefix reuse (cold slots): TTFT p50 (ms)",
         s["ttft"]["chat8_cold"]["p50"], "<= 300",
         s["ttft"]["chat8_cold"]["p50"] is not None and s["ttft"]["chat8_cold"]["p50"] <= 300),
        ("8 chat clients, prefix reuse (warm slots): TTFT p50 (ms)",
         s["ttft"]["chat8_warm"]["p50"], "<= 300",
         s["ttft"]["chat8_warm"]["p50"] is not None and s["ttft"]["chat8_warm"]["p50"] <= 300),
        ("node RSS with the model loaded (MB)", s["node_rss_loaded_mb"], "<= 400",
         s["node_rss_loaded_mb"] <= 400),
    ]
    return s


def _fmt(v: dict[str, float], digits: int = 0) -> str:
    return f"{v['median']:.{digits}f} ({v['min']:.{digits}f}-{v['max']:.{digits}f})"


def table_rows(s: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str, str, str]]]:
    speeds = [
        ("create_completion in-process, 1 stream (same GGUF)", _fmt(s["inproc_tok_s"])),
        ("inferno node over HTTP, 1 stream", _fmt(s["node_1_tok_s"])),
        ("inferno node over HTTP, 8 clients (aggregate)", _fmt(s["node_8_tok_s"])),
        ("llama_cpp.server, 1 stream", _fmt(s["server_1_tok_s"])),
        ("llama_cpp.server, 8 clients (aggregate)", _fmt(s["server_8_tok_s"])),
    ]
    if "inproc_native_tok_s" in s:
        speeds.insert(1, ("create_completion in-process, 1 stream (shipped Q4_1, reference)",
                          _fmt(s["inproc_native_tok_s"])))
    targets = [(name, f"{v:.2f}" if isinstance(v, float) else str(v), goal,
                "met" if ok else "NOT met") for name, v, goal, ok in s["targets"]]
    return speeds, targets


TTFT_ROWS = (
    ("node_8", "/v1/completions, 8 different raw prompts (node, reuse on)"),
    ("chat8_plain", "chat, 8 questions, shared system prompt: no prefix reuse"),
    ("chat8_cold", "chat, same: prefix reuse, cold slots (after the completion burst)"),
    ("chat8_warm", "chat, same: prefix reuse, warm slots (right after a chat burst)"),
)


def ttft_rows(s: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    return [(label, f(s["ttft"][k]["p50"]), f(s["ttft"][k]["p90"]),
             f"{f(s['ttft'][k]['round_min'])}-{f(s['ttft'][k]['round_max'])}")
            for k, label in TTFT_ROWS]


def report(run: Run) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    s = summarize(run)
    speeds, targets = table_rows(s)
    m = run.meta
    title = (f"SmolLM2-135M ({m['quantize']}), {m['threads']} thread(s), {m['max_tokens']} "
             f"tokens greedy, {s['rounds']} interleaved rounds")
    console = Console()
    t1 = Table(title=title)
    t1.add_column("contender")
    t1.add_column("tokens/s: median (min-max)", justify="right")
    for row in speeds:
        t1.add_row(*row)
    t2 = Table(title="targets (ratios: median of per-round ratios)")
    for col in ("target", "measured", "goal", ""):
        t2.add_column(col)
    for name, v, goal, ok in targets:
        t2.add_row(name, v, goal, f"[{'green' if ok == 'met' else 'red'}]{ok}[/]")
    t3 = Table(title=f"time to first token, 8 clients at once (ms; chat: {CHAT_MAX_TOKENS} "
                     "tokens each)")
    for col in ("burst", "p50", "p90", "per-round p50 (min-max)"):
        t3.add_column(col)
    for row3 in ttft_rows(s):
        t3.add_row(*row3)
    console.print(t1)
    console.print(t3)
    console.print(t2)
    noise = (f"CPU pressure (some avg10) {m['pressure_start']} at start, "
             f"{[r['pressure'] for r in run.rounds]} per round, {m['pressure_end']} at end; "
             f"per-round ratio spread: node1/inproc {_fmt(s['node1_over_inproc'], 2)}, "
             f"node8/node1 {_fmt(s['node8_over_node1'], 2)}, "
             f"node8/server8 {_fmt(s['node8_over_server8'], 2)}. "
             f"TTFT p90 with 8 clients {s['ttft8_p90_ms']:.0f} ms; node RSS peak "
             f"{s['node_rss_peak_mb']:.0f} MB; request errors: {len(s['errors'])}.")
    console.print(noise)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "llamacpp_batching.json").write_text(json.dumps(
        {"meta": m, "summary": s, "rounds": run.rounds}, indent=1, default=str))
    md = [f"### {title}", "", "| contender | tokens/s: median (min-max) |", "|---|---:|"]
    md += [f"| {a} | {b} |" for a, b in speeds]
    md += ["", f"Time to first token, 8 clients at once (ms; chat: {CHAT_MAX_TOKENS} tokens each):",
           "", "| burst | p50 | p90 | per-round p50 (min-max) |", "|---|---:|---:|---:|"]
    md += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in ttft_rows(s)]
    md += ["", "| target | measured | goal | |", "|---|---:|---|---|"]
    md += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in targets]
    md += ["", noise, ""]
    (RESULTS / "llamacpp_batching.md").write_text("\n".join(md))
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quantize", default="q8_0",
                    help="the node's --quantize; the baselines load the same file")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--n-ctx", type=int, default=512)
    ap.add_argument("--budget", type=float, default=300.0,
                    help="stop starting new rounds after this many seconds")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="where the converted GGUF is cached [default: the node's]")
    a = ap.parse_args()
    if a.data_dir is None:
        from inferno.models.quantize import default_data_dir

        a.data_dir = default_data_dir()
    report(measure(a))


def _shown(path: Path) -> str:
    """A path as results record it: relative to the checkout, never this machine's layout."""
    root = Path(__file__).resolve().parents[1]
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return Path(path).name


if __name__ == "__main__":
    main()

