"""Raw ``llama_decode`` step time for 1/4/8 generating sequences, per model variant.

A diagnostic for ``bench/llamacpp_batching.py``: is a step for 8 sequences much cheaper
than 8 single steps? Same context layout as the engine (non-unified KV, one stream per
sequence, flash attention, ubatch 63). Rerun:
``.venv/bin/python bench/_decode_steps.py --threads 1 native q8_0 q4_0 f16``
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time
from pathlib import Path

from inferno.models.catalog import resolve_model
from inferno.models.quantize import ensure_quantized

_keep: object = None


def step_times(path: Path, threads: int, ubatch: int, sizes: list[int], steps: int,
               rounds: int) -> dict[int, float]:
    import llama_cpp.llama_cpp as lib

    global _keep
    _keep = lib.llama_log_callback(lambda *_: None)  # llama.cpp keeps the raw pointer
    lib.llama_log_set(_keep, ctypes.c_void_p(0))
    lib.llama_backend_init()
    model = lib.llama_model_load_from_file(str(path).encode(), lib.llama_model_default_params())
    n_par = max(sizes)
    cp = lib.llama_context_default_params()
    cp.n_ctx, cp.n_seq_max, cp.kv_unified = 512 * n_par, n_par, False
    cp.n_batch, cp.n_ubatch = 512, ubatch
    cp.n_threads = cp.n_threads_batch = threads
    cp.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED
    cp.no_perf = True
    ctx = lib.llama_init_from_model(model, cp)
    mem = lib.llama_get_memory(ctx)
    batch = lib.llama_batch_init(512, 0, n_par)
    prompt = [1, 504, 3458, 282, 4649, 314, 253, 1345, 30]  # any tokens will do

    def decode(entries: list[tuple[int, int, int]]) -> None:
        for i, (tok, pos, sid) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, pos, 1, 1
            batch.seq_id[i][0] = sid
        batch.n_tokens = len(entries)
        assert lib.llama_decode(ctx, batch) == 0

    out: dict[int, list[float]] = {k: [] for k in sizes}
    for _ in range(rounds):
        for k in sizes:  # interleaved: noise hits every size alike
            for s in range(n_par):
                lib.llama_memory_seq_rm(mem, s, -1, -1)
            decode([(t, j, s) for s in range(k) for j, t in enumerate(prompt)])
            samples = []
            for step in range(steps):
                pos = len(prompt) + step
                t0 = time.perf_counter()
                decode([(600 + step, pos, s) for s in range(k)])
                samples.append(time.perf_counter() - t0)
            out[k].append(statistics.median(samples))
    lib.llama_batch_free(batch)
    lib.llama_free(ctx)
    lib.llama_model_free(model)
    return {k: min(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("variants", nargs="*", default=["native", "q8_0", "q4_0", "f16"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ubatch", type=int, default=63)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data-dir", type=Path, default=Path.home() / ".cache" / "inferno")
    a = ap.parse_args()
    src = resolve_model("smollm2-135m").path
    sizes = [1, 4, 8]
    print(f"threads={a.threads} ubatch={a.ubatch}  median step ms (best of {a.rounds})")
    for v in a.variants:
        path = ensure_quantized(src, v, a.data_dir)
        t = step_times(path, a.threads, a.ubatch, sizes, a.steps, a.rounds)
        cells = "  ".join(f"{k}seq {t[k] * 1e3:6.1f} ms" for k in sizes)
        print(f"{v:7s} {cells}   8seq/1seq = {t[8] / t[1]:.2f}x  "
              f"agg8 {8 / t[8]:.0f} tok/s vs 1seq {1 / t[1]:.0f} tok/s", flush=True)


if __name__ == "__main__":
    main()
