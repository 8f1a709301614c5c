"""The continuous-batching decode loop behind :class:`~.llamacpp.LlamaCppEngine`.

Everything here that touches llama.cpp runs in one worker thread, the only user of
the context, the batch and the samplers; the event loop only appends to the FIFO of
pending sequences (under a lock) and flips ``Sequence.cancelled``. See the module
docstring of :mod:`inferno.backend.engines.llamacpp` for the design.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import ctypes
import heapq
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from inferno.backend.engines._llama_sample import Candidates, token_logprob
from inferno.backend.engines._prefill import plan_prefill
from inferno.backend.engines._prefix_cache import PrefixCache, fed_tokens
from inferno.backend.engines.base import Chunk, FinishReason, TokenLogprob
from inferno.core.errors import EngineError

log = logging.getLogger(__name__)

# A queue item: a chunk, or the error that ends the generation.
Item = Chunk | BaseException


@dataclass(frozen=True, slots=True)
class SamplerConfig:
    temperature: float
    top_p: float
    seed: int
    presence_penalty: float
    frequency_penalty: float
    grammar: str | None = None  # GBNF, already checked to parse
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None  # see SamplingParams.logprobs


class Sequence:
    """One generation request, from the FIFO through its slot to its last chunk."""

    __slots__ = (
        "cancelled",
        "completion",
        "decoder",
        "finished",
        "generated",
        "grammar",
        "loop",
        "max_new",
        "n_fed",
        "next_token",
        "placed",
        "prompt",
        "queue",
        "sampler",
        "sampler_config",
        "seq_id",
        "skips",
        "wait_for",
        "wait_len",
    )

    def __init__(
        self,
        prompt: list[int],
        max_new: int,
        sampler_config: SamplerConfig,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[Item],
    ) -> None:
        self.prompt = prompt
        self.max_new = max_new
        self.sampler_config = sampler_config
        self.loop = loop
        self.queue = queue
        # Written by the event loop, read by the worker: a plain bool is enough under the GIL.
        self.cancelled = False
        self.finished = False
        self.seq_id = -1
        self.sampler: Any = None
        self.grammar: Any = None  # its own sampler, outside the chain (see _llama_sample)
        self.n_fed = 0  # tokens already decoded into the KV cache (prompt, then generated)
        self.next_token: int | None = None  # sampled, not yet decoded
        self.generated: list[int] = []  # sampled tokens meant for decoding (KV reuse)
        # Prefix reuse: placed once its stream is set up (n_fed = tokens reused); until
        # then it may wait for wait_for to have prefilled wait_len shared tokens.
        self.placed = False
        self.wait_for: Sequence | None = None
        self.wait_len = 0
        self.skips = 0  # steps passed over while prefilling (see _prefill.plan_prefill)
        self.completion = 0
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")


class BatchScheduler:
    """Owns the decode thread; ``lib`` is the ``llama_cpp.llama_cpp`` bindings module."""

    def __init__(
        self,
        lib: Any,
        ctx: Any,
        vocab: Any,
        *,
        n_batch: int,
        n_parallel: int,
        n_ctx_seq: int,
        name: str,
        prefill_per_step: int | None = None,
        prefill_group: int = 32,
        max_hold_s: float = 0.2,
        prefix_cache: bool = True,
        min_copy: int = 8,
    ) -> None:
        self._lib = lib
        self._ctx = ctx
        self._vocab = vocab
        self._mem = lib.llama_get_memory(ctx)
        self._n_batch = n_batch
        # At most this many tokens of one prompt per step (chunked prefill: a generating
        # sequence waits for at most one such chunk per token); more whole prompts join
        # a step while its prompt tokens stay within prefill_group (see _prefill).
        self._prefill_per_step = min(n_batch, prefill_per_step or n_batch)
        self._prefill_group = prefill_group
        self._max_hold_s = max_hold_s
        self._hold_since: float | None = None  # start of the current hold (_hold_decode)
        self._n_ctx_seq = n_ctx_seq
        self._n_vocab = lib.llama_vocab_n_tokens(vocab)
        self._batch = lib.llama_batch_init(n_batch, 0, n_parallel)
        # A heap: the lowest free id first, see _step on why ids should stay packed.
        self._free_ids = list(range(n_parallel))
        self._cond = threading.Condition()
        self._pending: deque[Sequence] = deque()  # guarded by _cond
        self._stopping = False  # guarded by _cond
        self._active: list[Sequence] = []  # worker-owned; len() read by stats()
        self._piece_buf = ctypes.create_string_buffer(256)
        eog = [t for t in (lib.llama_vocab_eos(vocab), lib.llama_vocab_eot(vocab)) if t >= 0]
        self._cands = Candidates(lib, ctx, self._n_vocab, eog)
        # None: every sequence starts from an empty stream (cleared when it ends).
        self._prefix = PrefixCache(n_parallel, min_copy=min_copy) if prefix_cache else None
        self.tokens_generated = 0
        self.prompt_tokens = 0
        self.prompt_tokens_reused = 0  # taken from a KV stream instead of decoded
        self.prompt_tokens_computed = 0  # decoded
        self._thread = threading.Thread(target=self._run, name=f"llamacpp-{name}", daemon=True)
        self._thread.start()

    # ---- event-loop side -------------------------------------------------------------

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def queued(self) -> int:
        return len(self._pending)

    def submit(self, seq: Sequence) -> None:
        with self._cond:
            if self._stopping:
                raise EngineError("the engine is closed or its decode loop has stopped")
            self._pending.append(seq)
            self._cond.notify()

    def cancel(self, seq: Sequence) -> None:
        seq.cancelled = True
        with self._cond:
            # A queued sequence leaves the FIFO now, so queue depth drops at once; an
            # active one is dropped by the worker before its next decode step.
            with contextlib.suppress(ValueError):
                self._pending.remove(seq)
            self._cond.notify()

    def stop(self) -> None:
        """Blocking: ends the worker (after its current step) and frees the batch."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None

    # ---- worker side -----------------------------------------------------------------

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            while True:
                with self._cond:
                    while not (self._stopping or self._pending or self._active):
                        self._cond.wait()
                    if self._stopping:
                        break
                    admitted: list[Sequence] = []
                    while self._pending and self._free_ids:
                        seq = self._pending.popleft()
                        seq.seq_id = heapq.heappop(self._free_ids)
                        admitted.append(seq)
                for seq in admitted:
                    seq.sampler = self._make_sampler(seq.sampler_config)
                    if seq.sampler_config.grammar is not None:
                        seq.grammar = self._lib.llama_sampler_init_grammar(
                            self._vocab, seq.sampler_config.grammar.encode(), b"root")
                    self.prompt_tokens += len(seq.prompt)
                    self._active.append(seq)
                    self._place(seq)
                self._drop_cancelled()
                self._place_waiting()
                if self._active:
                    self._step()
        except BaseException as exc:  # the thread must never die silently
            log.exception("llama.cpp decode loop failed")
            error = exc
        finally:
            with self._cond:
                self._stopping = True
                leftover = list(self._pending)
                self._pending.clear()
            out: list[tuple[Sequence, Item]] = []
            for seq in self._active + leftover:
                if error is None:
                    item: Item = Chunk("", len(seq.prompt), seq.completion, "abort")
                else:
                    item = EngineError(f"llama.cpp decode loop failed: {error}")
                out.append((seq, item))
            for seq in list(self._active):
                self._release(seq)
            self._deliver(out)

    def _make_sampler(self, cfg: SamplerConfig) -> Any:
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if cfg.logit_bias:
            biases = (lib.llama_logit_bias * len(cfg.logit_bias))()
            for i, (tok, bias) in enumerate(cfg.logit_bias):
                biases[i].token, biases[i].bias = tok, bias
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_logit_bias(
                self._n_vocab, len(cfg.logit_bias), biases))
        if cfg.presence_penalty or cfg.frequency_penalty:
            # OpenAI semantics: only generated tokens count, and the chain only ever
            # accepts the tokens it sampled itself.
            lib.llama_sampler_chain_add(
                chain,
                lib.llama_sampler_init_penalties(
                    self._n_vocab, self._n_ctx_seq, 1.0,
                    cfg.frequency_penalty, cfg.presence_penalty,
                ),
            )
        if cfg.temperature <= 0.0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        else:
            # Temperature before top-p: the nucleus is taken from the distribution that
            # is actually sampled, as OpenAI documents.
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(cfg.temperature))
            if cfg.top_p < 1.0:
                lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(cfg.top_p, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(cfg.seed))
        return chain

    def _place(self, seq: Sequence, *, may_wait: bool = True) -> None:
        """Sets up the sequence's stream: the reusable prefix kept or copied, the rest
        removed; or, when its prefix is being prefilled by another, has it wait."""
        lib, mem, sid = self._lib, self._mem, seq.seq_id
        if self._prefix is None:
            seq.placed = True  # its stream was cleared when its last user ended
            return
        plan = self._prefix.plan(seq, sid, self._active, may_wait=may_wait)
        if plan.wait_for is not None:
            seq.wait_for, seq.wait_len = plan.wait_for, plan.n_reuse
            return
        if plan.source != sid:
            # Whole-stream copy (the only cross-stream copy this llama.cpp supports),
            # applied at the start of the next llama_decode, in call order.
            lib.llama_memory_seq_cp(mem, plan.source, sid, -1, -1)
        lib.llama_memory_seq_rm(mem, sid, plan.n_reuse, -1)
        self._prefix.hold(sid, [])  # now described by the sequence itself
        seq.wait_for = None
        seq.n_fed = plan.n_reuse
        seq.placed = True
        self.prompt_tokens_reused += plan.n_reuse

    def _place_waiting(self) -> None:
        for seq in self._active:
            src = seq.wait_for
            if src is not None and (src.finished or src.n_fed >= seq.wait_len):
                self._place(seq)

    def _release(self, seq: Sequence, *, keep_kv: bool = True) -> None:
        self._active.remove(seq)
        if not seq.placed:
            pass  # never touched its stream: whatever the slot held is still there
        elif self._prefix is not None and keep_kv:
            self._prefix.hold(seq.seq_id, fed_tokens(seq))
        else:
            self._lib.llama_memory_seq_rm(self._mem, seq.seq_id, -1, -1)
            if self._prefix is not None:
                self._prefix.hold(seq.seq_id, [])
        if seq.sampler is not None:
            self._lib.llama_sampler_free(seq.sampler)
            seq.sampler = None
        if seq.grammar is not None:
            self._lib.llama_sampler_free(seq.grammar)
            seq.grammar = None
        seq.finished = True
        with self._cond:
            heapq.heappush(self._free_ids, seq.seq_id)

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self._active if s.cancelled]:
            self._release(seq)

    def _hold_decode(self, prefilling: bool) -> bool:
        """Whether this step leaves the generating sequences out, for prompts only.

        With one KV stream per sequence a step that mixes one-token rows with a prompt
        is split into two ubatches, two passes over the weights, so each prefill step
        beside generating sequences costs an extra ~single-token step. Holding the
        generating ones for up to ``max_hold_s`` (then one mixed step, then again) lets
        a burst of prompts reach its first tokens sooner, like TGI's prefill that pauses
        the running batch; no generating sequence waits longer than that per token.
        """
        generating = any(s.next_token is not None for s in self._active)
        if not (prefilling and generating and self._max_hold_s > 0):
            self._hold_since = None
            return False
        now = time.monotonic()
        if self._hold_since is None:
            self._hold_since = now
        if now - self._hold_since < self._max_hold_s:
            return True
        self._hold_since = None
        return False

    def _step(self) -> None:
        lib, batch = self._lib, self._batch
        token, pos, n_seq_id, seq_ids, logits = (
            batch.token, batch.pos, batch.n_seq_id, batch.seq_id, batch.logits,
        )
        n = 0
        fed: list[tuple[Sequence, int]] = []  # tokens each sequence adds to the KV cache
        outputs: list[tuple[Sequence, int]] = []  # batch index whose logits it samples
        prompts = [s for s in self._active if s.next_token is None and s.placed]
        # Generating sequences first: one row each, in seq_id order (with one KV stream
        # per sequence llama.cpp puts only runs of consecutive seq_ids into one ubatch,
        # so an unordered batch, or ids with holes, costs extra ubatches, each a full
        # pass over the weights). Unless they are held for a prefill, see _hold_decode.
        if not self._hold_decode(bool(prompts)):
            for seq in sorted(self._active, key=_by_seq_id):
                if seq.next_token is not None:
                    token[n], pos[n], n_seq_id[n], logits[n] = seq.next_token, seq.n_fed, 1, 1
                    seq_ids[n][0] = seq.seq_id
                    fed.append((seq, 1))
                    outputs.append((seq, n))
                    n += 1
        # Then prompts, shortest remaining first (see _prefill): a burst's first tokens
        # come one prompt after another instead of all at the end, and a long prompt
        # is spread over several steps while the generating sequences keep going.
        room = min(self._n_batch - n, self._prefill_per_step)
        plan = plan_prefill(
            [len(s.prompt) - s.n_fed for s in prompts], [s.skips for s in prompts],
            chunk=room, group=self._prefill_group,
        ) if prompts and room > 0 else []
        for s in prompts:
            s.skips += 1
        for i, take in plan:
            seq = prompts[i]
            seq.skips = 0
            prompt, sid, start = seq.prompt, seq.seq_id, seq.n_fed
            for j in range(start, start + take):
                token[n], pos[n], n_seq_id[n], logits[n] = prompt[j], j, 1, 0
                seq_ids[n][0] = sid
                n += 1
            fed.append((seq, take))
            self.prompt_tokens_computed += take
            if start + take == len(prompt):
                logits[n - 1] = 1
                outputs.append((seq, n - 1))
        if n == 0:
            # Only sequences waiting for a prefix. Cannot happen (a wait is for a placed
            # sequence still prefilling, and those always get a share of the step), but
            # must not spin: place them as they are.
            for seq in [s for s in self._active if not s.placed]:
                self._place(seq, may_wait=False)
            return
        batch.n_tokens = n
        rc = lib.llama_decode(self._ctx, batch)
        if rc != 0:
            # 1 (no KV slot) cannot happen: admission keeps every sequence within its
            # budget and the cache holds all budgets. Anything else fails this batch's
            # sequences only; their cells are removed so the others go on.
            failed: list[tuple[Sequence, Item]] = []
            for seq, _ in fed:
                self._release(seq, keep_kv=False)
                failed.append((seq, EngineError(f"llama_decode failed with status {rc}")))
            self._deliver(failed)
            return
        for seq, count in fed:
            seq.n_fed += count
        out: list[tuple[Sequence, Item]] = []
        vocab = self._vocab
        for seq, idx in outputs:
            top = seq.sampler_config.logprobs
            lps: tuple[TokenLogprob, ...] = ()
            cfg = seq.sampler_config
            if seq.grammar is None:
                tok = lib.llama_sampler_sample(seq.sampler, self._ctx, idx)
            else:  # the cost of a by-hand step only for the sequences that asked
                tok = self._cands.sample(idx, seq.sampler, seq.grammar, stateful=bool(
                    cfg.presence_penalty or cfg.frequency_penalty))
            if top is not None and not lib.llama_vocab_is_eog(vocab, tok):
                lps = (token_logprob(self._cands.logits(idx), tok, top, self._piece),)
            if lib.llama_vocab_is_eog(vocab, tok):
                # The end-of-generation token is not part of the completion: no text,
                # not counted in completion_tokens.
                self._release(seq)
                out.append((seq, self._final(seq, "", "stop")))
                continue
            seq.completion += 1
            self.tokens_generated += 1
            text = seq.decoder.decode(self._piece(tok))
            if seq.completion >= seq.max_new:
                self._release(seq)
                out.append((seq, self._final(seq, text, "length", lps)))
            else:
                seq.next_token = tok
                seq.generated.append(tok)
                out.append((seq, Chunk(text, len(seq.prompt), seq.completion, None, lps)))
        self._deliver(out)

    def _final(self, seq: Sequence, text: str, reason: FinishReason,
               lps: tuple[TokenLogprob, ...] = ()) -> Chunk:
        text += seq.decoder.decode(b"", final=True)
        return Chunk(text, len(seq.prompt), seq.completion, reason, lps)

    def _piece(self, tok: int) -> bytes:
        buf = self._piece_buf
        # special=False: control tokens (<|im_end|>, ...) render as nothing.
        n = self._lib.llama_token_to_piece(self._vocab, tok, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, tok, buf, len(buf), 0, False)
        return buf.raw[:n]

    def _deliver(self, out: list[tuple[Sequence, Item]]) -> None:
        """One ``call_soon_threadsafe`` per event loop per step, not one per token."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Sequence, Item]]] = {}
        for seq, item in out:
            by_loop.setdefault(seq.loop, []).append((seq, item))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # that loop is closed: nobody is listening any more
                for seq, _ in items:
                    seq.cancelled = True


def _by_seq_id(seq: Sequence) -> int:
    return seq.seq_id


def _put_all(items: list[tuple[Sequence, Item]]) -> None:
    for seq, item in items:
        seq.queue.put_nowait(item)
