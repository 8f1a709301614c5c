"""Sampling from a step's logits by hand, for sequences that need more than
``llama_sampler_sample``: a grammar; and log-probabilities. Worker-thread only.

Only sequences with a grammar sample here; log-probabilities are read from the same
step's logits after llama.cpp sampled (``token_logprob``).

**Grammar, fast path first** (as llama.cpp's ``common_sampler`` does). A grammar sampler
costs a check of every vocabulary entry against the grammar's stacks (~49k for SmolLM2),
which would slow a step down several times. So the token is first sampled without the
grammar, and only that one token is checked. When the grammar rejects it (often: small
models like to put whitespace where JSON has none), the step is sampled again among the
``SHORTLISTS`` most likely tokens (and the end-of-generation ones) with the grammar applied
to those only, then among more, and with the whole vocabulary only when none of them is
allowed. Greedy,
this is exactly the most likely allowed token; with temperature it is the masked
distribution truncated to the shortlist (a top-k of 128, whose tail carries next to no
probability), and the fast path keeps a draw from the unmasked distribution when it is
allowed, as llama.cpp's own sampler does.

**The GIL.** ctypes releases the GIL around every foreign call, and a thread that wants
it back may wait for the event loop's thread to hand it over (up to the 5 ms switch
interval): the by-hand path makes about eight calls per token, so on a busy process they
cost more waiting than work. The short ones (logits pointer, accept, a grammar over a
shortlist) go through the same library loaded as a ``ctypes.PyDLL``, which keeps the GIL;
the whole-vocabulary grammar pass (milliseconds) still lets other threads run.

**Log-probabilities** are the model's own (log-softmax of the raw logits, before bias,
penalties, temperature or grammar), as OpenAI reports them.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import numpy as np

from inferno.backend.engines.base import TokenLogprob

# Tried in turn: a literal the grammar forces (a key's name) is often not among the first.
SHORTLISTS = (128, 4096)
_CELL = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


class Candidates:
    """One reusable ``llama_token_data_array`` over the vocabulary (the worker's only)."""

    def __init__(self, lib: Any, ctx: Any, n_vocab: int, eog: list[int]) -> None:
        self._lib = lib
        self._short = _holding_gil(lib)
        self._ctx = ctx
        self.n_vocab = n_vocab
        self._cells = (lib.llama_token_data * n_vocab)()
        self._view = np.frombuffer(self._cells, dtype=_CELL)
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._eog = np.array(eog, dtype=np.int64)
        self._arr = lib.llama_token_data_array(self._cells, n_vocab, -1, False)
        self._one = (lib.llama_token_data * 1)()
        self._one_arr = lib.llama_token_data_array(self._one, 1, -1, False)

    def logits(self, idx: int) -> Any:
        ptr = self._short.llama_get_logits_ith(self._ctx, idx)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def _fill(self, logits: Any, ids: Any = None) -> None:
        view, arr = self._view, self._arr
        if ids is None:
            view["id"] = self._ids  # samplers sort and truncate the cells in place
            view["logit"] = logits
            view["p"] = 0.0
            arr.size = self.n_vocab
        else:
            k = len(ids)
            view["id"][:k] = ids
            view["logit"][:k] = logits[ids]
            view["p"][:k] = 0.0
            arr.size = k
        arr.selected, arr.sorted = -1, False

    def _apply(self, sampler: Any) -> None:
        lib = self._short if self._arr.size <= SHORTLISTS[-1] + 8 else self._lib
        lib.llama_sampler_apply(sampler, ctypes.byref(self._arr))

    def _sample(self, logits: Any, samplers: list[Any]) -> int:
        self._fill(logits)
        for sampler in samplers:
            self._apply(sampler)
        return int(self._cells[self._arr.selected].id)

    def _sample_masked(self, logits: Any, chain: Any, grammar: Any) -> int:
        order = None
        for k in SHORTLISTS:
            if k >= self.n_vocab:
                break
            if order is None:  # one partial sort serves every shortlist
                order = np.argpartition(-logits, SHORTLISTS[-1])[: SHORTLISTS[-1]]
                order = order[np.argsort(-logits[order])]
            self._fill(logits, np.unique(np.concatenate((order[:k], self._eog))))
            self._apply(grammar)
            if np.isfinite(self._view["logit"][: self._arr.size]).any():
                self._apply(chain)
                return int(self._cells[self._arr.selected].id)
        return self._sample(logits, [grammar, chain])

    def allows(self, grammar: Any, token: int) -> bool:
        one = self._one[0]
        one.id, one.logit, one.p = token, 1.0, 0.0
        self._one_arr.size, self._one_arr.selected = 1, -1
        self._short.llama_sampler_apply(grammar, ctypes.byref(self._one_arr))
        return not math.isinf(one.logit)

    def sample(self, idx: int, chain: Any, grammar: Any, *, stateful: bool) -> int:
        """The next token under ``grammar``, accepted by the chain and the grammar.

        ``stateful``: the chain remembers accepted tokens (penalties), so it must accept
        the final token only; otherwise the first pick is llama.cpp's own
        ``llama_sampler_sample`` (one call, no array filled here), whose accepting a token
        the grammar then rejects changes nothing.
        """
        if stateful:
            logits = self.logits(idx)
            token = self._sample(logits, [chain])
            if not self.allows(grammar, token):
                token = self._sample_masked(logits, chain, grammar)
            self._short.llama_sampler_accept(chain, token)
        else:
            token = self._short.llama_sampler_sample(chain, self._ctx, idx)
            if not self.allows(grammar, token):
                token = self._sample_masked(self.logits(idx), chain, grammar)
        self._short.llama_sampler_accept(grammar, token)
        return token


class _Short:
    """The few functions above, bound through a ``PyDLL`` (no GIL release)."""

    def __init__(self, lib: Any) -> None:
        dll = ctypes.PyDLL(lib._lib._name)
        for name in ("llama_get_logits_ith", "llama_sampler_apply", "llama_sampler_accept",
                     "llama_sampler_sample"):
            fn, orig = getattr(dll, name), getattr(lib, name)
            fn.argtypes, fn.restype = orig.argtypes, orig.restype
            setattr(self, name, fn)


def _holding_gil(lib: Any) -> Any:
    try:
        return _Short(lib)
    except (AttributeError, OSError):  # bindings laid out differently: the plain calls
        return lib


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
