"""The ONNX Runtime engine with the real shipped all-MiniLM-L6-v2, and tiny generic models."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from inferno.backend.engines._minilm_ref import BertConfig, read_safetensors, reference_embed
from inferno.backend.engines.onnx import OnnxEngine, _pad
from inferno.core.errors import ContextLengthExceeded, EngineError
from inferno.models.catalog import resolve_model

pytest.importorskip("onnxruntime")
MINILM = resolve_model("all-minilm-l6-v2").path


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> OnnxEngine:
    """Built from the weights into a fresh cache: this is the build + reference check."""
    engine = OnnxEngine(MINILM, model_id="all-minilm-l6-v2", threads=1,
                        data_dir=tmp_path_factory.mktemp("data"))
    engine.load()
    return engine


def test_built_graph_matches_numpy_reference(minilm: OnnxEngine) -> None:
    texts = ["Embeddings map text to vectors.", "Mean pooling then L2 normalisation.",
             "A longer sentence, with punctuation; and several clauses, to exercise padding."]
    ids, mask = _pad(minilm.tokenize_batch(texts))
    got = np.stack(minilm._run([list(r[m == 1]) for r, m in zip(ids, mask, strict=True)]))
    cfg = BertConfig.from_dir(MINILM)
    want = reference_embed(read_safetensors(MINILM / "model.safetensors"), cfg, ids, mask)
    assert np.abs(got - want).max() <= 1e-5
    assert minilm.info.dimensions == 384 and minilm.info.context_length == 256
    assert minilm.info.capabilities == {"embeddings"}


def test_standard_ops_graph_also_matches_the_reference(tmp_path: Path) -> None:
    """The fallback graph (no contrib kernels) is as exact as the fused one."""
    import onnxruntime as ort

    from inferno.backend.engines._onnx_graph import build_encoder

    weights = read_safetensors(MINILM / "model.safetensors")
    cfg = BertConfig.from_dir(MINILM)
    build_encoder(weights, cfg, tmp_path / "plain.onnx", fused=False)
    sess = ort.InferenceSession(str(tmp_path / "plain.onnx"), providers=["CPUExecutionProvider"])
    ids, mask = _pad([[101, 7592, 102], [101, 1037, 2146, 6251, 2007, 11263, 102]])
    got = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    assert np.abs(got - reference_embed(weights, cfg, ids, mask)).max() <= 1e-5


def test_cached_graph_is_reused(minilm: OnnxEngine) -> None:
    assert minilm.onnx_path is not None and minilm.onnx_path.is_file()
    mtime = minilm.onnx_path.stat().st_mtime_ns
    again = OnnxEngine(MINILM, model_id="m", data_dir=minilm.onnx_path.parent.parent)
    again.load()
    assert again.onnx_path == minilm.onnx_path
    assert minilm.onnx_path.stat().st_mtime_ns == mtime
    assert not list(minilm.onnx_path.parent.glob("*.tmp"))


async def test_unit_norm_and_similarity(minilm: OnnxEngine) -> None:
    res = await minilm.embed(["A man is eating food.", "A man is eating a piece of bread.",
                              "The stock market fell sharply today."])
    v = np.asarray(res.vectors)
    assert v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3
    assert res.prompt_tokens == sum(len(x) for x in minilm.tokenize_batch(
        ["A man is eating food.", "A man is eating a piece of bread.",
         "The stock market fell sharply today."]))


async def test_concurrent_requests_share_batches_and_match_singles(minilm: OnnxEngine) -> None:
    texts = [f"sentence number {i} about {'cats' if i % 2 else 'finance'}" for i in range(24)]
    single = np.asarray((await minilm.embed(texts[:1])).vectors)[0]
    before = minilm._batcher.batches
    results = await asyncio.gather(*(minilm.embed([t]) for t in texts))
    assert minilm._batcher.batches - before < len(texts)  # requests were batched together
    assert np.abs(np.asarray(results[0].vectors)[0] - single).max() <= 1e-5
    assert minilm.stats().queued == 0 and minilm.stats().active == 0


async def test_too_long_input_is_refused_naming_the_limit(minilm: OnnxEngine) -> None:
    with pytest.raises(ContextLengthExceeded, match="at most 256 tokens") as info:
        await minilm.embed(["short", "word " * 300])
    assert "Input 1" in info.value.message and info.value.param == "input"


# ---- generic ONNX models with a declared contract ------------------------------------


def _tiny_model(dirpath: Path, *, per_token: bool, contract: dict[str, object]) -> Path:
    """A real ONNX file: token embeddings from a table; mean over tokens unless per_token."""
    from onnx import TensorProto, helper, numpy_helper, save

    vocab = 30522
    width = 4 if per_token else 2
    table = np.zeros((vocab, width), np.float32)
    tok = json.loads((MINILM / "tokenizer.json").read_text())["model"]["vocab"]
    table[tok["good"], :2] = [0.0, 5.0]  # "good" pushes towards the second label
    table[tok["bad"], :2] = [5.0, 0.0]
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["emb"])]
    if per_token:
        nodes.append(helper.make_node("Identity", ["emb"], ["out"]))
        out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", "s", width])
    else:
        nodes.append(helper.make_node("ReduceMean", ["emb", "axes"], ["out"], keepdims=0))
        out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", width])
    inits = [numpy_helper.from_array(table, "table"),
             numpy_helper.from_array(np.array([1], np.int64), "axes")]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                                      ["b", "s"])], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    dirpath.mkdir()
    save(model, str(dirpath / "model.onnx"))
    shutil.copy(MINILM / "tokenizer.json", dirpath / "tokenizer.json")
    (dirpath / "inferno.json").write_text(json.dumps(contract))
    return dirpath


async def test_classifier_with_a_declared_contract(tmp_path: Path) -> None:
    path = _tiny_model(tmp_path / "clf", per_token=False, contract={
        "task": "classification", "inputs": ["input_ids"], "output": "out",
        "labels": ["negative", "positive"], "max_length": 32})
    engine = OnnxEngine(path, model_id="tiny-clf")
    engine.load()
    assert engine.info.capabilities == {"classifications"}
    results, tokens = await engine.classify(["good", "bad"])
    assert [r.label for r in results] == ["positive", "negative"]
    assert all(abs(sum(r.scores.values()) - 1.0) < 1e-6 for r in results)
    assert tokens == 6  # [CLS] word [SEP], twice
    await engine.close()


async def test_embedding_model_with_pooling_contract(tmp_path: Path) -> None:
    path = _tiny_model(tmp_path / "emb", per_token=True, contract={
        "task": "embedding", "inputs": ["input_ids"], "output": "out", "pooling": "mean",
        "normalize": True, "max_length": 32})
    engine = OnnxEngine(path / "model.onnx", model_id="tiny-emb")
    engine.load()
    assert engine.info.dimensions == 4
    v = np.asarray((await engine.embed(["good good", "bad"])).vectors)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)
    assert v[0][1] > 0.99 and v[1][0] > 0.99
    await engine.close()


@pytest.mark.parametrize("contract,match", [
    pytest.param(None, "contract .* is missing", id="no-contract"),
    pytest.param({"task": "classification", "output": "nope", "inputs": ["input_ids"]},
                 "no output 'nope'",
                 id="unknown-output"),
    pytest.param({"task": "classification", "output": "out", "inputs": ["attention_mask"]},
                 "lacks the inputs", id="missing-input"),
    pytest.param({"task": "translate", "output": "out"}, "task must be", id="bad-task"),
])
def test_bad_contracts_fail_clearly(tmp_path: Path, contract: dict[str, object] | None,
                                    match: str) -> None:
    path = _tiny_model(tmp_path / "m", per_token=False, contract=contract or {})
    if contract is None:
        (path / "inferno.json").unlink()
    with pytest.raises(EngineError, match=match):
        OnnxEngine(path, model_id="x").load()
