"""Prompt-prefix KV reuse for :class:`~._llama_batch.BatchScheduler`: what each slot's
KV stream holds, and where a new prompt's prefix can be taken from.

How it works
------------
A slot (``seq_id``, one KV stream of ``n_ctx`` cells) keeps its cells when its sequence
ends: the cache remembers which tokens they hold (prompt plus the generated tokens that
were decoded). A new sequence still gets the lowest free ``seq_id`` (packed ids keep a
step to as few ubatches as possible, see ``_step``), and then takes the longest common
prefix of its prompt from the best stream:

* its own stream (the usual case: chat requests share the system prompt, and the lowest
  free id is the slot that ran the previous request): the tail past the common prefix is
  removed with ``llama_memory_seq_rm`` and prefill starts at that position;
* another slot's stream, free or active: ``llama_memory_seq_cp`` then ``seq_rm`` of the
  tail. Across streams this build only copies a *whole* stream (``n_ctx`` cells of every
  layer, asserted in ``llama_kv_cache::seq_cp``; the copy runs at the start of the next
  ``llama_decode``): measured ~2 ms at n_ctx 512 and ~25 ms at 4096 for SmolLM2-135M,
  the cost of 0.5-4 prompt tokens, so a copy is only made when it saves at least
  ``min_copy`` tokens over the own stream;
* a prompt still being prefilled by an active sequence (a burst of requests with the
  same system prompt on cold slots): the new sequence waits, without feeding anything,
  until that prefix is in the other stream, then copies it.

The last prompt token is always decoded (its logits start the answer), so a prompt
identical to a cached one recomputes one token.

Exactness: a token's K/V depend only on the tokens before it, and in this engine's
layout (per-sequence streams filled in position order, flash attention, ubatch < 64)
they are bit-identical whatever the batch shape (the batching tests). A copied or kept
prefix is thus exactly what a fresh prefill would compute; the tests compare greedy
output with reuse on and off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inferno.backend.engines._llama_batch import Sequence


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix, with slice comparisons (C speed)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # invariant: a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def fed_tokens(seq: Sequence) -> list[int]:
    """The tokens whose K/V a placed sequence's stream holds (position order)."""
    n_prompt = len(seq.prompt)
    if seq.n_fed <= n_prompt:
        return seq.prompt[: seq.n_fed]
    return seq.prompt + seq.generated[: seq.n_fed - n_prompt]


@dataclass(frozen=True, slots=True)
class Plan:
    """Where a new sequence's first ``n_reuse`` tokens come from."""

    source: int  # the slot whose stream holds them (the target itself: no copy)
    n_reuse: int
    wait_for: Sequence | None = None  # set: wait until it has prefilled n_reuse tokens


class PrefixCache:
    """Worker-thread only. ``held[slot]``: the tokens a *free* slot's stream holds."""

    def __init__(self, n_slots: int, *, min_copy: int) -> None:
        self._held: list[list[int]] = [[] for _ in range(n_slots)]
        self._min_copy = max(1, min_copy)

    def hold(self, slot: int, tokens: list[int]) -> None:
        self._held[slot] = tokens

    def plan(self, seq: Sequence, target: int, active: list[Sequence],
             *, may_wait: bool = True) -> Plan:
        prompt = seq.prompt
        limit = len(prompt) - 1  # the last prompt token is always decoded
        best_src = target
        best = own = min(limit, common_prefix(prompt, self._held[target]))
        for slot, tokens in enumerate(self._held):
            if slot != target and tokens:
                c = min(limit, common_prefix(prompt, tokens))
                if c > best:
                    best_src, best = slot, c
        for other in active:
            if other is not seq and other.placed and other.n_fed > best:
                c = min(limit, common_prefix(prompt, fed_tokens(other)))
                if c > best:
                    best_src, best = other.seq_id, c
        if best_src != target and best - own < self._min_copy:
            best_src, best = target, own
        if may_wait:
            # A prompt still being prefilled elsewhere: worth waiting for when it will
            # hold min_copy more tokens than anything available now.
            wait_for, wait_len = None, best + self._min_copy - 1
            for other in active:
                if (other is not seq and other.placed and other.n_fed < len(other.prompt)
                        and len(other.prompt) > wait_len):
                    c = min(limit, common_prefix(prompt, other.prompt))
                    if c > wait_len and c > other.n_fed:
                        wait_for, wait_len = other, c
            if wait_for is not None:
                return Plan(wait_for.seq_id, wait_len, wait_for)
        return Plan(best_src, best)
