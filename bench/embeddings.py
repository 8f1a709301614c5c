"""Embeddings throughput: the ONNX engine with all-MiniLM-L6-v2 (sentences per second).

Rows: the model alone (tokenise + one ``session.run`` per batch) at batch 32 and batch 1,
and the engine as a node uses it (many concurrent one-sentence requests, batched together
by the micro-batcher). Each row runs for ``--seconds`` after one warm-up batch.

    .venv/bin/python bench/embeddings.py                 # 2 threads (the target)
    .venv/bin/python bench/embeddings.py --threads 1 2   # several thread counts

Target: >= 300 sentences/s at batch 32 on 2 threads.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import time

from inferno.backend.engines.onnx import OnnxEngine
from inferno.models.catalog import resolve_model

_SUBJECTS = ["The cat", "A young engineer", "Our inference cloud", "The old bridge",
             "A quick brown fox", "The central bank", "This new phone", "My neighbour"]
_VERBS = ["quietly watched", "carefully rebuilt", "suddenly jumped over", "slowly explained",
          "happily served", "never understood", "strongly criticised", "finally repaired"]
_OBJECTS = ["the river at dawn", "every request in the queue", "a lazy dog near the station",
            "the interest rates for next year", "the tiny battery that kept failing",
            "a long list of unanswered questions about the project"]


def sentences(n: int, seed: int = 0) -> list[str]:
    """Short sentences of varied length (about 8 to 20 tokens), like typical search text."""
    rnd = random.Random(seed)
    return [f"{rnd.choice(_SUBJECTS)} {rnd.choice(_VERBS)} {rnd.choice(_OBJECTS)}."
            for _ in range(n)]


def bench_direct(engine: OnnxEngine, batch: int, seconds: float) -> tuple[float, float]:
    texts = sentences(4096)
    engine._run(engine.tokenize_batch(texts[:batch]))  # warm-up
    done, i, start, cpu = 0, 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        chunk = texts[i:i + batch] if i + batch <= len(texts) else texts[:batch]
        i = (i + batch) % len(texts)
        engine._run(engine.tokenize_batch(chunk))
        done += len(chunk)
    return done / (time.perf_counter() - start), done / (time.process_time() - cpu)


async def bench_requests(engine: OnnxEngine, concurrency: int,
                         seconds: float) -> tuple[float, float]:
    texts = sentences(4096, seed=1)
    await engine.embed(texts[:8])  # warm-up
    done = 0
    stop = time.perf_counter() + seconds

    async def client(k: int) -> None:
        nonlocal done
        j = k
        while time.perf_counter() < stop:
            await engine.embed([texts[j % len(texts)]])
            done += 1
            j += concurrency

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    rate = done / (time.perf_counter() - start), done / (time.process_time() - cpu)
    await engine.close()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--model", default="all-minilm-l6-v2")
    args = ap.parse_args()
    path = resolve_model(args.model).path
    print(f"# {args.model} on {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.2f}")
    # sentences per CPU-second is the load-robust figure on a shared machine: on an idle one,
    # sentences/s approaches it times the threads (minus threading overhead).
    print("| threads | mode | sentences/s | sentences per CPU-second |")
    print("|---|---|---|---|")
    for threads in args.threads:
        engine = OnnxEngine(path, model_id=args.model, threads=threads, batch_size=32)
        engine.load()
        rows = [
            ("model, batch 32", bench_direct(engine, 32, args.seconds)),
            ("model, batch 1", bench_direct(engine, 1, args.seconds)),
            ("node: 64 concurrent 1-sentence requests, batched (max 32)",
             asyncio.run(bench_requests(engine, 64, args.seconds))),
        ]
        for mode, (rate, per_cpu) in rows:
            print(f"| {threads} | {mode} | {rate:.0f} | {per_cpu:.0f} |", flush=True)


if __name__ == "__main__":
    main()
