"""Would prompt-lookup (n-gram) speculative decoding pay on this node? Measured, not built.

    .venv/bin/python bench/prompt_lookup.py                 # ~1 min, 1 thread
    .venv/bin/python bench/prompt_lookup.py --threads 2 --variants native q8_0

Prompt lookup drafts the next tokens by finding the sequence's latest n-gram earlier in
its own prompt or output and proposing what followed it; one decode step then checks the
draft, and every draft token that matches the greedy choice is a token gained. It pays
when drafts are accepted often enough to cover what checking them costs.

Two measurements, multiplied together:

1. **Acceptance** (deterministic): each prompt is completed greedily (64 tokens, as in
   ``bench/node_vs_llama_server.py``), and the draft a prompt-lookup decoder would have
   made at each step (longest suffix match of 3, then 2, then 1 tokens; up to ``--draft``
   tokens) is scored against the real continuation. Prompt sets: the node-vs-server
   bench's story prompts, the batching bench's chat questions, and an "edit this text"
   prompt set whose answers copy the prompt (the best case for lookup); drafting on any
   match of 1+ tokens, or only on a 3-token match.
2. **Cost** (timed): one ``llama_decode`` step with n query tokens per sequence, n = 1..9,
   for 1 and 16 sequences, in the engine's context layout (``_decode_steps.Runner``).

The projected speed-up of a prompt set is tokens gained per step over the step's cost
relative to a plain one-token step: sum(accepted + 1) / sum(cost(1 + drafted) / cost(1)).
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time
from pathlib import Path
from typing import Any

import _decode_steps as ds
import llamacpp_batching as lb

from inferno.models.catalog import resolve_model
from inferno.models.quantize import ensure_quantized

TOKENS = 64
EDITS = (
    "The quick brown fox jumps over the lazy dog. The dog does not move. The fox jumps again.",
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n",
    "Our meeting is on Monday at ten in room four. Please bring the report and the slides.",
    "Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital "
    "of Italy.",
)


def story_prompts(n: int) -> list[str]:
    return [lb.prompt(i) for i in range(n)]


def chat_prompts(llm: Any) -> list[str]:
    return [_chat(llm, q) for q in lb.QUESTIONS]


def edit_prompts(llm: Any) -> list[str]:
    return [_chat(llm, f"Repeat this text exactly, then fix any mistakes:\n\n{t}")
            for t in EDITS]


def _chat(llm: Any, question: str) -> str:
    from jinja2 import Template

    template = llm.metadata["tokenizer.chat_template"]
    return str(Template(template).render(
        messages=[{"role": "user", "content": question}], add_generation_prompt=True))


def greedy(llm: Any, text: str) -> tuple[list[int], list[int]]:
    prompt = llm.tokenize(text.encode(), add_bos=True, special=True)
    out: list[int] = []
    llm.reset()
    for tok in llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0):
        if tok == llm.token_eos() or len(out) >= TOKENS:
            break
        out.append(tok)
    return prompt, out


def draft(history: list[int], k: int, min_n: int) -> list[int]:
    """What a prompt-lookup decoder proposes after ``history``: the tokens that followed
    the latest earlier occurrence of its last 3 (else 2, ... down to ``min_n``) tokens."""
    for n in range(3, min_n - 1, -1):
        if len(history) <= n:
            continue
        tail = history[-n:]
        for start in range(len(history) - n - 1, -1, -1):
            if history[start:start + n] == tail:
                return history[start + n:start + n + k]
    return []


def score(prompt: list[int], out: list[int], k: int, min_n: int) -> list[tuple[int, int]]:
    """(drafted, accepted) per verify step while generating ``out`` after ``prompt``."""
    steps, pos = [], 0
    while pos < len(out):
        d = draft(prompt + out[:pos], k, min_n)
        accepted = 0
        while accepted < len(d) and pos + accepted < len(out) - 1 \
                and d[accepted] == out[pos + accepted]:
            accepted += 1
        steps.append((len(d), accepted))
        pos += accepted + 1
    return steps


def step_costs(runner: ds.Runner, seqs: int, widths: range, rounds: int) -> dict[int, float]:
    """Median time of one decode step with ``w`` query tokens in each of ``seqs``
    sequences (best of ``rounds``), after a 9-token prompt in each."""
    best: dict[int, float] = {}
    for _ in range(rounds):
        for w in widths:
            samples = []
            for rep in range(8):
                for s in range(seqs):
                    runner.lib.llama_memory_seq_rm(runner.mem, s, -1, -1)
                runner.decode([(t, j, s) for s in range(seqs)
                               for j, t in enumerate(ds.PROMPT)])
                t0 = time.perf_counter()
                runner.decode([(600 + rep + j, len(ds.PROMPT) + j, s)
                               for s in range(seqs) for j in range(w)])
                samples.append(time.perf_counter() - t0)
            m = statistics.median(samples)
            best[w] = min(best.get(w, m), m)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--draft", type=int, default=4, help="most tokens drafted per step")
    ap.add_argument("--variants", nargs="*", default=["native", "q8_0"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data-dir", type=Path, default=Path.home() / ".cache" / "inferno")
    a = ap.parse_args()
    import llama_cpp

    ds.SIZES = (1, 16)  # the Runner sizes its context for the most sequences
    import llama_cpp.llama_cpp as lib

    ds._keep = lib.llama_log_callback(lambda *_: None)
    lib.llama_log_set(ds._keep, ctypes.c_void_p(0))
    src = resolve_model("smollm2-135m").path
    llm = llama_cpp.Llama(str(src), n_ctx=1024, n_threads=a.threads, verbose=False)
    sets = {"stories (node-vs-server bench)": story_prompts(16),
            "chat questions": chat_prompts(llm), "edit/repeat text": edit_prompts(llm)}
    answers = {name: [greedy(llm, t) for t in texts] for name, texts in sets.items()}
    del llm
    # Drafting on any 1-gram match, or only on a 3-gram match (fewer, surer drafts).
    steps = {f"{name}, {n}-gram+": [s for p, o in ans for s in score(p, o, a.draft, n)]
             for name, ans in answers.items() for n in (1, 3)}

    print(f"threads={a.threads} draft<={a.draft}, greedy {TOKENS}-token answers\n")
    print("| prompts | steps | drafted/step | accepted/step | accepted/drafted "
          "| tokens/step |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, st in steps.items():
        drafted = sum(d for d, _ in st)
        acc = sum(x for _, x in st)
        print(f"| {name} | {len(st)} | {drafted / len(st):.2f} | {acc / len(st):.2f} | "
              f"{acc / max(drafted, 1):.0%} | {(acc + len(st)) / len(st):.2f} |")

    widths = range(1, a.draft + 2)
    print("\n| weights | sequences | step cost for 1..n query tokens (x one-token step) "
          "| projected speed-up per prompt set |")
    print("|---|---:|---|---|")
    for variant in a.variants:
        runner = ds.Runner(lib, ensure_quantized(src, variant, a.data_dir), a.threads, 63)
        for seqs in (1, 16):
            if seqs * (a.draft + 1) > 512:
                continue
            cost = step_costs(runner, seqs, widths, a.rounds)
            rel = {w: cost[w] / cost[1] for w in widths}
            proj = []
            for name, st in steps.items():
                gained = sum(x + 1 for _, x in st)
                spent = sum(rel[1 + d] for d, _ in st)
                proj.append(f"{name.split(' ')[0]}{name.split(',')[1]} {gained / spent:.2f}x")
            cells = " ".join(f"{rel[w]:.2f}" for w in widths)
            print(f"| {variant} | {seqs} | {cells} ({cost[1] * 1e3:.1f} ms) | "
                  f"{', '.join(proj)} |")


if __name__ == "__main__":
    main()
