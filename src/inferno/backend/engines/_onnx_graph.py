"""Build an ONNX sentence-encoder graph from BERT safetensors with ``onnx.helper`` (no torch).

The graph takes ``input_ids`` and ``attention_mask`` (int64 ``[batch, seq]``) and returns
``sentence_embedding`` (float32 ``[batch, hidden]``): embeddings + LayerNorm, the encoder
layers (Q, K and V fused into one MatMul, exact GELU), mean pooling over the mask and L2
normalisation all inside the graph, so one ``session.run`` gives the final vectors.
``fused=True`` (the default) writes each layer with ONNX Runtime's CPU contrib kernels
(``com.microsoft`` Attention, SkipLayerNormalization, BiasGelu: about 60 nodes instead of
200, no per-head Reshape/Transpose); ``fused=False`` uses standard ONNX ops only, for
runtimes without the contrib kernels.
Token type ids are always 0 for single sentences, so that row is folded into the position
embeddings. :func:`build_encoder` writes the model; checking it against
:func:`._minilm_ref.reference_embed` and moving it into the cache is the caller's job
(see :mod:`.onnx`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inferno.backend.engines._minilm_ref import BertConfig
from inferno.core.errors import EngineError

OPSET = 20
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "sentence_embedding"


class _Graph:
    """A tiny node/initializer accumulator with unique names."""

    def __init__(self, helper: Any, numpy_helper: Any) -> None:
        self.h = helper
        self.nh = numpy_helper
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def const(self, name: str, value: npt.NDArray[Any]) -> str:
        self.inits.append(self.nh.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, kind: str, *inputs: str, **attrs: Any) -> str:
        self._n += 1
        out = f"{kind.lower()}_{self._n}"
        self.nodes.append(self.h.make_node(kind, list(inputs), [out], **attrs))
        return out


def i64(*v: int) -> npt.NDArray[np.int64]:
    return np.array(v, dtype=np.int64)


def _fused_layer(g: _Graph, helper: Any, x: str, mask_i32: str, p: str,
                 f32: Any, cfg: BertConfig) -> str:
    """One encoder layer from ONNX Runtime's CPU contrib ops (com.microsoft): Attention,
    SkipLayerNormalization and BiasGelu run as single fused kernels."""
    ms = "com.microsoft"
    qkv_w = np.concatenate([f32(p + f"attention.self.{n}.weight").T
                            for n in ("query", "key", "value")], axis=1)
    qkv_b = np.concatenate([f32(p + f"attention.self.{n}.bias")
                            for n in ("query", "key", "value")])
    ctx = g.op("Attention", x, g.const(f"{p}qkv.w", qkv_w), g.const(f"{p}qkv.b", qkv_b),
               mask_i32, domain=ms, num_heads=cfg.heads)
    attn = g.op("MatMul", ctx, g.const(f"{p}ao.w", f32(p + "attention.output.dense.weight").T))
    x = g.op("SkipLayerNormalization", attn, x,
             g.const(f"{p}ln1.w", f32(p + "attention.output.LayerNorm.weight")),
             g.const(f"{p}ln1.b", f32(p + "attention.output.LayerNorm.bias")),
             g.const(f"{p}ao.b", f32(p + "attention.output.dense.bias")),
             domain=ms, epsilon=cfg.eps)
    h = g.op("MatMul", x, g.const(f"{p}in.w", f32(p + "intermediate.dense.weight").T))
    h = g.op("BiasGelu", h, g.const(f"{p}in.b", f32(p + "intermediate.dense.bias")), domain=ms)
    out = g.op("MatMul", h, g.const(f"{p}out.w", f32(p + "output.dense.weight").T))
    return g.op("SkipLayerNormalization", out, x,
                g.const(f"{p}ln2.w", f32(p + "output.LayerNorm.weight")),
                g.const(f"{p}ln2.b", f32(p + "output.LayerNorm.bias")),
                g.const(f"{p}out.b", f32(p + "output.dense.bias")),
                domain=ms, epsilon=cfg.eps)


def build_encoder(weights: dict[str, npt.NDArray[np.generic]], cfg: BertConfig,
                  out_path: Path, *, fused: bool = True) -> None:
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as exc:
        raise EngineError("Building the ONNX graph needs the 'onnx' package: "
                          "pip install -e '.[onnx]'") from exc

    def f32(name: str) -> npt.NDArray[np.float32]:
        return np.asarray(weights[name], dtype=np.float32)

    g = _Graph(helper, numpy_helper)
    hd = cfg.hidden // cfg.heads
    axes_last = g.const("axes_last", i64(-1))
    axes_seq = g.const("axes_seq", i64(1))

    # Embeddings: words + positions (+ token type 0, folded in) -> LayerNorm.
    words = g.op("Gather", g.const("word_emb", f32("embeddings.word_embeddings.weight")),
                 "input_ids")
    pos_table = (f32("embeddings.position_embeddings.weight")
                 + f32("embeddings.token_type_embeddings.weight")[0])
    seq_len = g.op("Slice", g.op("Shape", "input_ids"), g.const("s1", i64(1)),
                   g.const("s2", i64(2)))
    pos = g.op("Slice", g.const("pos_emb", pos_table), g.const("zero", i64(0)), seq_len,
               g.const("axis0", i64(0)))
    x = g.op("LayerNormalization", g.op("Add", words, pos),
             g.const("emb_ln_w", f32("embeddings.LayerNorm.weight")),
             g.const("emb_ln_b", f32("embeddings.LayerNorm.bias")), axis=-1, epsilon=cfg.eps)

    maskf = g.op("Cast", "attention_mask", to=TensorProto.FLOAT)
    if fused:  # the contrib Attention op takes the 0/1 mask itself
        mask_i32 = g.op("Cast", "attention_mask", to=TensorProto.INT32)
    else:  # additive attention bias [batch, 1, 1, seq]: 0 where attended, -1e9 on padding
        bias = g.op("Mul", g.op("Sub", g.const("one", np.array(1.0, np.float32)), maskf),
                    g.const("neg", np.array(-1e9, np.float32)))
        bias = g.op("Unsqueeze", bias, g.const("axes12", i64(1, 2)))
        split_heads = g.const("split_heads", i64(0, 0, cfg.heads, hd))
        merge_heads = g.const("merge_heads", i64(0, 0, cfg.hidden))
        scale = g.const("scale", np.array(1.0 / math.sqrt(hd), np.float32))

    for i in range(cfg.layers):
        p = f"encoder.layer.{i}."

        def dense(h: str, name: str, p: str = p) -> str:
            w = g.const(f"{p}{name}.w", f32(p + name + ".weight").T)
            b = g.const(f"{p}{name}.b", f32(p + name + ".bias"))
            return g.op("Add", g.op("MatMul", h, w), b)

        if fused:
            x = _fused_layer(g, helper, x, mask_i32, p, f32, cfg)
            continue
        qkv_w = np.concatenate([f32(p + f"attention.self.{n}.weight").T
                                for n in ("query", "key", "value")], axis=1)
        qkv_b = np.concatenate([f32(p + f"attention.self.{n}.bias")
                                for n in ("query", "key", "value")])
        qkv = g.op("Add", g.op("MatMul", x, g.const(f"{p}qkv.w", qkv_w)),
                   g.const(f"{p}qkv.b", qkv_b))
        q_out, k_out, v_out = f"{p}q", f"{p}k", f"{p}v"
        g.nodes.append(helper.make_node("Split", [qkv], [q_out, k_out, v_out], axis=-1,
                                        num_outputs=3))

        def heads(t: str, perm: tuple[int, ...]) -> str:
            return g.op("Transpose", g.op("Reshape", t, split_heads), perm=list(perm))

        q = heads(q_out, (0, 2, 1, 3))
        k = heads(k_out, (0, 2, 3, 1))  # already transposed for Q @ K^T
        v = heads(v_out, (0, 2, 1, 3))
        scores = g.op("Add", g.op("Mul", g.op("MatMul", q, k), scale), bias)
        ctx = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
        ctx = g.op("Reshape", g.op("Transpose", ctx, perm=[0, 2, 1, 3]), merge_heads)
        x = g.op("LayerNormalization", g.op("Add", x, dense(ctx, "attention.output.dense")),
                 g.const(f"{p}ln1.w", f32(p + "attention.output.LayerNorm.weight")),
                 g.const(f"{p}ln1.b", f32(p + "attention.output.LayerNorm.bias")),
                 axis=-1, epsilon=cfg.eps)
        h = g.op("Gelu", dense(x, "intermediate.dense"), approximate="none")
        x = g.op("LayerNormalization", g.op("Add", x, dense(h, "output.dense")),
                 g.const(f"{p}ln2.w", f32(p + "output.LayerNorm.weight")),
                 g.const(f"{p}ln2.b", f32(p + "output.LayerNorm.bias")),
                 axis=-1, epsilon=cfg.eps)

    # Mean pooling over real tokens, then L2 normalisation.
    m = g.op("Unsqueeze", maskf, axes_last)
    summed = g.op("ReduceSum", g.op("Mul", x, m), axes_seq, keepdims=0)
    count = g.op("Max", g.op("ReduceSum", m, axes_seq, keepdims=0),
                 g.const("tiny", np.array(1e-9, np.float32)))
    mean = g.op("Div", summed, count)
    norm = g.op("Sqrt", g.op("ReduceSum", g.op("Mul", mean, mean), axes_last, keepdims=1))
    norm = g.op("Max", norm, g.const("eps12", np.array(1e-12, np.float32)))
    g.nodes.append(helper.make_node("Div", [mean, norm], [OUTPUT]))

    graph = helper.make_graph(
        g.nodes, "sentence_encoder",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in INPUTS],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", cfg.hidden])],
        initializer=g.inits)
    opsets = [helper.make_opsetid("", OPSET)]
    if fused:
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="inferno")
    model.ir_version = 10
    onnx.checker.check_model(model)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
