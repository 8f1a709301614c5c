"""Raw ``llama_decode`` step time for 1/4/8 generating sequences, per model variant.

A diagnostic behind ``bench/llamacpp_batching.py``: is one step for 8 sequences much
cheaper than 8 single steps? Same context layout as the engine (non-unified KV, one
stream per sequence, flash attention, ubatch 63). All variants are loaded at once and
measured interleaved, round by round, so a noisy neighbour hits them alike. Rerun:
``.venv/bin/python bench/_decode_steps.py --threads 1 native q8_0 q4_0 f16``
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time
from pathlib import Path
from typing import Any

from inferno.models.catalog import resolve_model
from inferno.models.quantize import ensure_quantized

SIZES = (1, 4, 8)
PROMPT = [1, 504, 3458, 282, 4649, 314, 253, 1345, 30]  # any tokens will do
_keep: Any = None  # llama.cpp keeps a raw pointer to the log callback


class Runner:
    def __init__(self, lib: Any, path: Path, threads: int, ubatch: int) -> None:
        self.lib = lib
        self.model = lib.llama_model_load_from_file(str(path).encode(),
                                                    lib.llama_model_default_params())
        n_par = max(SIZES)
        cp = lib.llama_context_default_params()
        cp.n_ctx, cp.n_seq_max, cp.kv_unified = 512 * n_par, n_par, False
        cp.n_batch, cp.n_ubatch = 512, ubatch
        cp.n_threads = cp.n_threads_batch = threads
        cp.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED
        cp.no_perf = True
        self.ctx = lib.llama_init_from_model(self.model, cp)
        self.mem = lib.llama_get_memory(self.ctx)
        self.batch = lib.llama_batch_init(512, 0, n_par)

    def decode(self, entries: list[tuple[int, int, int]]) -> None:
        b = self.batch
        for i, (tok, pos, sid) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, 1
            b.seq_id[i][0] = sid
        b.n_tokens = len(entries)
        assert self.lib.llama_decode(self.ctx, b) == 0

    def step_time(self, k: int, steps: int) -> float:
        for s in range(max(SIZES)):
            self.lib.llama_memory_seq_rm(self.mem, s, -1, -1)
        self.decode([(t, j, s) for s in range(k) for j, t in enumerate(PROMPT)])
        samples = []
        for step in range(steps):
            t0 = time.perf_counter()
            self.decode([(600 + step, len(PROMPT) + step, s) for s in range(k)])
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)


def main() -> None:
    global _keep
    ap = argparse.ArgumentParser()
    ap.add_argument("variants", nargs="*", default=["native", "q8_0", "q4_0", "f16"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ubatch", type=int, default=63)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--data-dir", type=Path, default=Path.home() / ".cache" / "inferno")
    a = ap.parse_args()
    import llama_cpp.llama_cpp as lib

    _keep = lib.llama_log_callback(lambda *_: None)
    lib.llama_log_set(_keep, ctypes.c_void_p(0))
    lib.llama_backend_init()
    src = resolve_model("smollm2-135m").path
    runners = {v: Runner(lib, ensure_quantized(src, v, a.data_dir), a.threads, a.ubatch)
               for v in a.variants}
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(a.rounds):
        for v, r in runners.items():
            for k in SIZES:
                times.setdefault((v, k), []).append(r.step_time(k, a.steps))
    print(f"threads={a.threads} ubatch={a.ubatch}: median step ms, best of {a.rounds} "
          f"interleaved rounds (spread = worst/best round)")
    for v in a.variants:
        t = {k: min(times[v, k]) for k in SIZES}
        spread = max(max(times[v, k]) / min(times[v, k]) for k in SIZES)
        cells = "  ".join(f"{k}seq {t[k] * 1e3:6.1f}" for k in SIZES)
        print(f"{v:7s} {cells}  8seq/1seq {t[8] / t[1]:.2f}x  agg8 {8 / t[8]:4.0f} tok/s "
              f"= {8 * t[1] / t[8]:.2f}x 1seq ({1 / t[1]:.0f} tok/s)  spread {spread:.1f}x")


if __name__ == "__main__":
    main()
