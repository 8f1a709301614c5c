"""BERT-style sentence encoders (all-MiniLM-L6-v2) in plain NumPy: the reference.

Two jobs, both without torch:
- :func:`read_safetensors` parses the ``.safetensors`` format (an 8-byte little-endian
  header length, a JSON header of ``name -> dtype, shape, data_offsets``, then raw bytes)
  straight into NumPy arrays; it is simple enough not to need the ``safetensors`` package.
- :func:`reference_embed` runs the same forward pass as the ONNX graph built by
  :mod:`._onnx_graph` (embeddings + LayerNorm, N encoder layers with exact erf GELU, mean
  pooling over the attention mask, L2 normalisation) in float64, so the built graph can be
  checked against it. It is slow (tens of sentences per second): a check, not a runtime.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from inferno.core.errors import EngineError

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64,
           "I32": np.int32, "BF16": None}


def read_safetensors(path: Path) -> dict[str, npt.NDArray[np.generic]]:
    """Every tensor in a ``.safetensors`` file, as NumPy arrays (copies, so the file can go)."""
    raw = path.read_bytes()
    if len(raw) < 8:
        raise EngineError(f"{path} is not a safetensors file (too short).")
    (n,) = struct.unpack("<Q", raw[:8])
    try:
        header = json.loads(raw[8:8 + n])
    except ValueError as exc:
        raise EngineError(f"{path} has an unreadable safetensors header.") from exc
    data = memoryview(raw)[8 + n:]
    out: dict[str, npt.NDArray[np.generic]] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(meta["dtype"])
        if dtype is None:
            raise EngineError(f"{path}: tensor {name} has unsupported dtype {meta['dtype']}.")
        start, end = meta["data_offsets"]
        arr = np.frombuffer(data[start:end], dtype=np.dtype(dtype).newbyteorder("<"))
        out[name] = arr.reshape(meta["shape"]).copy()
    return out


@dataclass(frozen=True, slots=True)
class BertConfig:
    hidden: int
    heads: int
    layers: int
    eps: float
    max_positions: int

    @classmethod
    def from_dir(cls, model_dir: Path) -> BertConfig:
        cfg = json.loads((model_dir / "config.json").read_text())
        if cfg.get("hidden_act", "gelu") != "gelu":
            raise EngineError(f"{model_dir}: only hidden_act 'gelu' is supported.")
        return cls(hidden=int(cfg["hidden_size"]), heads=int(cfg["num_attention_heads"]),
                   layers=int(cfg["num_hidden_layers"]), eps=float(cfg["layer_norm_eps"]),
                   max_positions=int(cfg["max_position_embeddings"]))


_erf = np.vectorize(math.erf, otypes=[np.float64])


def _layer_norm(x: F64, w: F64, b: F64, eps: float) -> F64:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    out: F64 = (x - mu) / np.sqrt(var + eps) * w + b
    return out


def reference_embed(weights: dict[str, npt.NDArray[np.generic]], cfg: BertConfig,
                    input_ids: I64, attention_mask: I64) -> F64:
    """Sentence embeddings ``[batch, hidden]``, unit length, computed in float64."""
    w = {k: v.astype(np.float64) for k, v in weights.items() if v.dtype.kind == "f"}
    _, seq = input_ids.shape
    x = (w["embeddings.word_embeddings.weight"][input_ids]
         + w["embeddings.position_embeddings.weight"][:seq]
         + w["embeddings.token_type_embeddings.weight"][0])
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], cfg.eps)
    mask = attention_mask.astype(np.float64)
    bias = ((1.0 - mask) * -1e9)[:, None, None, :]
    hd = cfg.hidden // cfg.heads
    for i in range(cfg.layers):
        p = f"encoder.layer.{i}."

        def lin(name: str, h: F64, p: str = p) -> F64:
            return h @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        def heads(h: F64) -> F64:
            b, s, _ = h.shape
            return h.reshape(b, s, cfg.heads, hd).transpose(0, 2, 1, 3)

        q = heads(lin("attention.self.query", x))
        k = heads(lin("attention.self.key", x))
        v = heads(lin("attention.self.value", x))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + bias
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(x.shape)
        x = _layer_norm(x + lin("attention.output.dense", ctx),
                        w[p + "attention.output.LayerNorm.weight"],
                        w[p + "attention.output.LayerNorm.bias"], cfg.eps)
        h = lin("intermediate.dense", x)
        h = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)))
        x = _layer_norm(x + lin("output.dense", h), w[p + "output.LayerNorm.weight"],
                        w[p + "output.LayerNorm.bias"], cfg.eps)
    m = mask[:, :, None]
    mean = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    norm = np.sqrt((mean**2).sum(-1, keepdims=True))
    out: F64 = mean / np.maximum(norm, 1e-12)
    return out
