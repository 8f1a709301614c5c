"""Sampling from a step's logits by hand, for sequences that need more than
``llama_sampler_sample``: a grammar, or log-probabilities. Worker-thread only.

**Grammar, fast path first** (as llama.cpp's ``common_sampler`` does). A grammar sampler
costs a check of every vocabulary entry against the grammar's stacks (~49k for SmolLM2),
which would slow a step down several times. So the token is first sampled without the
grammar, and only that one token is checked; when the grammar rejects it, the step is
sampled again with the grammar applied to the whole vocabulary. Both paths give the
token the chain would pick from the grammar-masked distribution when the first pick is
allowed: masking never raises an allowed token's rank. (With temperature, the fast path
draws from the unmasked distribution and keeps the draw when it is allowed, which is
the masked distribution restricted to that event; llama.cpp makes the same choice.)

**Log-probabilities** are the model's own (log-softmax of the raw logits, before bias,
penalties, temperature or grammar), as OpenAI reports them.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import numpy as np

from inferno.backend.engines.base import TokenLogprob

_CELL = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


class Candidates:
    """One reusable ``llama_token_data_array`` over the vocabulary (the worker's only)."""

    def __init__(self, lib: Any, ctx: Any, n_vocab: int) -> None:
        self._lib = lib
        self._ctx = ctx
        self.n_vocab = n_vocab
        self._cells = (lib.llama_token_data * n_vocab)()
        self._view = np.frombuffer(self._cells, dtype=_CELL)
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._arr = lib.llama_token_data_array(self._cells, n_vocab, -1, False)
        self._one = (lib.llama_token_data * 1)()
        self._one_arr = lib.llama_token_data_array(self._one, 1, -1, False)

    def logits(self, idx: int) -> Any:
        ptr = self._lib.llama_get_logits_ith(self._ctx, idx)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def _sample(self, logits: Any, samplers: list[Any]) -> int:
        view, arr = self._view, self._arr
        view["id"] = self._ids  # samplers sort and truncate the cells in place
        view["logit"] = logits
        view["p"] = 0.0
        arr.size, arr.selected, arr.sorted = self.n_vocab, -1, False
        for sampler in samplers:
            self._lib.llama_sampler_apply(sampler, ctypes.byref(arr))
        return int(self._cells[arr.selected].id)

    def allows(self, grammar: Any, token: int) -> bool:
        one = self._one[0]
        one.id, one.logit, one.p = token, 1.0, 0.0
        self._one_arr.size, self._one_arr.selected = 1, -1
        self._lib.llama_sampler_apply(grammar, ctypes.byref(self._one_arr))
        return not math.isinf(one.logit)

    def sample(self, idx: int, chain: Any, grammar: Any) -> tuple[int, Any]:
        """The next token (accepted by the chain and the grammar) and the step's logits."""
        logits = self.logits(idx)
        token = self._sample(logits, [chain])
        if grammar is not None:
            if not self.allows(grammar, token):
                token = self._sample(logits, [grammar, chain])
            self._lib.llama_sampler_accept(grammar, token)
        self._lib.llama_sampler_accept(chain, token)
        return token, logits


def token_logprob(logits: Any, token: int, top: int, piece: Any) -> TokenLogprob:
    """The chosen token's log-probability and the ``top`` most likely, best first;
    ``piece(token)`` gives a token's bytes."""
    row = logits.astype(np.float64)
    peak = row.max()
    norm = peak + math.log(float(np.exp(row - peak).sum()))
    best: tuple[tuple[str, float, bytes], ...] = ()
    if top > 0:
        ids = np.argpartition(-row, top)[:top]
        ids = ids[np.argsort(-row[ids])]
        best = tuple(_entry(int(i), float(row[i] - norm), piece) for i in ids)
    raw = piece(token)
    return TokenLogprob(raw.decode("utf-8", errors="replace"), float(row[token] - norm), raw,
                        best)


def _entry(token: int, logprob: float, piece: Any) -> tuple[str, float, bytes]:
    raw = piece(token)
    return raw.decode("utf-8", errors="replace"), logprob, raw
