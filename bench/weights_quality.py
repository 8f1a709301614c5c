"""What a converted weight type costs in quality: KL divergence from the shipped weights.

    .venv/bin/python bench/weights_quality.py                    # q8_0 q5_0 q4_0 iq4_nl f16
    .venv/bin/python bench/weights_quality.py q8_0 --threads 2

The shipped SmolLM2-135M file (Q4_1) and each ``--quantize`` copy of it (built by
``inferno.models.quantize``, cached under ``--data-dir``) read the same fixed English
text. Per variant, over every position of the text: the mean KL divergence (nats) of its
next-token distribution from the shipped file's, the text's perplexity, and how often
both put the same token first. This is the quality side of ``quantize: auto`` (which
serves q8_0 copies of small Q4_1/Q5_1 models); the speed side is
``bench/node_vs_llama_server.py``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np

from inferno.models.catalog import resolve_model
from inferno.models.quantize import ensure_quantized, silence_llama_logs

TEXT = """\
The harbour town woke slowly. Fishing boats came in with the tide, their decks crowded
with nets and crates, and the gulls followed them in wide, noisy circles. On the quay an
old woman sold bread from a wooden cart, calling out the price to anyone who passed. The
baker's son carried trays of rolls down the hill, stopping at every door he knew.

By noon the market was full. Merchants argued over the weight of fish and the colour of
cloth; children ran between the stalls; a man with a violin played the same three songs
again and again. Nobody minded. The sun was warm, the sea was calm, and the ships in the
bay rocked gently at their anchors.

In the evening the lamps were lit one by one along the water. The sailors went to the
inn, where the fire was high and the soup was hot, and they told the stories they always
told: of storms that nearly sank them, of islands that were not on any map, of a whale so
large that it blocked out the moon. The innkeeper listened, nodded, and filled their cups.
When the last of them had gone to bed, she wiped the tables, locked the door, and stood
for a while at the window, watching the lighthouse turn its slow beam across the dark.
"""


def log_probs(path: Path, tokens: list[int], threads: int) -> np.ndarray:
    """Log-softmax of the model's logits at every position of ``tokens``."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=1024, n_batch=1024, n_threads=threads,
                          logits_all=True, verbose=False)
    llm.eval(tokens)
    logits = np.asarray(llm.scores[:len(tokens)], dtype=np.float64)
    del llm
    shifted = logits - logits.max(axis=1, keepdims=True)
    out: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return out


def compare(ref: np.ndarray, other: np.ndarray, tokens: list[int]) -> dict[str, float]:
    # Position i predicts token i + 1; the last position predicts nothing in the text.
    p, q = ref[:-1], other[:-1]
    kl = float((np.exp(p) * (p - q)).sum(axis=1).mean())
    nll = -float(np.mean([q[i, tokens[i + 1]] for i in range(len(tokens) - 1)]))
    agree = float(np.mean(p.argmax(axis=1) == q.argmax(axis=1)))
    return {"kl": kl, "ppl": math.exp(nll), "top1": agree}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="*", default=["q8_0", "q5_0", "q4_0", "iq4_nl", "f16"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", type=Path, default=Path.home() / ".cache" / "inferno")
    a = ap.parse_args()
    import llama_cpp
    import llama_cpp.llama_cpp as lib

    silence_llama_logs(lib)
    source = resolve_model("smollm2-135m").path
    vocab: Any = llama_cpp.Llama(str(source), vocab_only=True, verbose=False)
    tokens = vocab.tokenize(TEXT.encode(), add_bos=True)
    ref = log_probs(source, tokens, a.threads)
    shipped = compare(ref, ref, tokens)
    print(f"{source.name}, {len(tokens)} tokens of fixed text\n")
    print("| weights | KL from the shipped weights (nats, mean per token) | perplexity "
          "| same top-1 token |")
    print("|---|---:|---:|---:|")
    print(f"| shipped (Q4_1) | 0 | {shipped['ppl']:.2f} | 100 % |")
    for v in a.variants:
        r = compare(ref, log_probs(ensure_quantized(source, v, a.data_dir), tokens,
                                   a.threads), tokens)
        print(f"| {v} | {r['kl']:.4f} | {r['ppl']:.2f} | {r['top1']:.0%} |", flush=True)


if __name__ == "__main__":
    main()
