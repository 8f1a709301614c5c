"""The llama.cpp engine: continuous batching over the low-level ``llama_cpp`` bindings.

Design
------
* **One decode thread per model.** A ``llama_context`` is not thread-safe, and
  ``llama_decode`` releases the GIL (ctypes), so a single dedicated worker thread
  (:class:`~._llama_batch.BatchScheduler`) owns the context, the ``llama_batch`` and
  every sampler. The event loop never calls into the context: ``generate()`` appends
  a sequence to a FIFO under a lock and awaits a per-request ``asyncio.Queue``.
* **Continuous batching.** Each step packs, into one ``llama_batch`` of at most
  ``n_batch`` tokens, the next token of every generating sequence (one each, first)
  and then prompt tokens of newly admitted sequences, shortest remaining prompt first
  (:mod:`~._prefill`): a burst of prompts gets its first tokens one prompt after
  another rather than all at the end. A long prompt is spread over several steps of at
  most one ubatch each (chunked prefill). While prompts are waiting, the generating
  sequences may sit out steps for up to ``prefill_hold_ms`` (a step mixing both costs
  two passes over the weights here, see ``_hold_decode``). Sequences join between
  steps (up to ``n_parallel``; the rest wait FIFO) and leave between steps: their KV
  cells are kept for prefix reuse or removed, and their ``seq_id`` returns to the pool.
* **Back to the loop.** After each step the worker hands every new chunk to its
  request's queue with one ``loop.call_soon_threadsafe`` per event loop, not one per
  token. Closing the iterator marks the sequence cancelled; the worker drops it before
  the next step.
* **KV cache.** The context holds ``n_ctx * n_parallel`` cells, non-unified
  (``kv_unified=False``): llama.cpp then gives each of the ``n_seq_max = n_parallel``
  sequences its own stream of exactly ``n_ctx`` cells (``llama_n_ctx_seq == n_ctx``).
  Every admitted sequence is thus guaranteed its whole budget (prompt + max_tokens
  <= n_ctx, checked before queuing) and decode can never run out of cells, whatever
  the others hold. A *unified* cache (every sequence sees ``n_ctx_seq`` = the whole
  cache) was rejected: sized ``n_ctx`` it lets the sequences together outgrow it
  mid-generation; sized ``n_ctx * n_parallel`` it works, but a sequence's cells land
  in holes left by finished ones, out of position order, and flash attention's
  accumulation order (hence a greedy sequence's output) then depends on its
  neighbours. Per-sequence streams always fill from cell 0 in position order.
* **Determinism.** Besides the streams: flash attention is enabled explicitly (the
  non-flash softmax rounds differently depending on where a sequence's cells sit)
  and ubatches are capped below 64 rows (see ``_MAX_UBATCH``), so a greedy
  sequence's logits are bit-identical alone or batched (tested). Costs ~15% prefill.
* **Prompt-prefix reuse** (``prefix_cache``, default on). A slot keeps its KV cells
  when its sequence ends; a new prompt takes its longest common prefix from its own
  stream (trimmed with ``seq_rm``), from another stream (a whole-stream ``seq_cp``, when
  that saves at least ``min_copy`` tokens), or waits for a sequence that is prefilling
  the same prefix right now. Chat requests share the template's system prompt, so most
  of their prefill is skipped; output is bit-identical (tested). See
  :mod:`~._prefix_cache`.
* **Constrained sampling and logprobs.** ``response_format`` becomes a GBNF grammar
  (:mod:`~._llama_grammar`, built and parse-checked off the event loop, before the
  request queues, so a bad schema is a 400), held by the sequence beside its sampler
  chain; ``logit_bias`` joins the chain. Grammar steps and log-probabilities are handled
  per sequence in :mod:`~._llama_sample`, so sequences that ask nothing pay nothing.
* **Weight type.** ``quantize`` loads a converted copy of the GGUF, built once and
  cached under ``data_dir`` (:mod:`inferno.models.quantize`); ``auto`` (what nodes get
  by default) picks Q8_0 for a small Q4_1/Q5_1 model served to several sequences at
  once, else the file as it is (``choose_weights``). ggml's CPU
  backend has a batched matmul path (llamafile sgemm, repacked AVX2 kernels) for Q8_0,
  Q4_0, IQ4_NL and F16 but not for Q4_1, the type of the shipped SmolLM2 file: with it a
  step for 8 sequences costs ~4.5 single steps, with Q8_0 ~3. Q4_1 -> Q8_0 is
  near-lossless (KL 0.006 nats from the original); Q4_0 and IQ4_NL are faster still but
  lossy (KL 0.35-0.4). Numbers: ``bench/README.md``.
* **No speculative decoding.** Prompt lookup (drafts from the sequence's own n-grams)
  was measured (``bench/prompt_lookup.py``): on this CPU a decode step costs about
  linearly in its query tokens, so checking a draft costs what it saves; it lost 0-15 %
  on story and chat prompts and gained only on one stream copying its prompt.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import secrets
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import Any

from inferno.backend.engines._llama_batch import BatchScheduler, Item, SamplerConfig
from inferno.backend.engines._llama_batch import Sequence as _Seq
from inferno.backend.engines._llama_grammar import GrammarCheck, grammar_for
from inferno.backend.engines.base import (
    Chunk,
    EngineStats,
    Feature,
    ModelInfo,
    SamplingParams,
)
from inferno.core.errors import (
    ConfigError,
    ContextLengthExceeded,
    EngineError,
    InvalidRequest,
)
from inferno.models.quantize import silence_llama_logs

log = logging.getLogger(__name__)

# Batch invariance: the CPU flash-attention kernel switches to a tiled variant, with
# different rounding, once a ubatch holds 64 or more query rows. A prompt prefilled
# alone (37 rows) and the same prompt prefilled beside others (97 rows) would then
# produce different logits and, at temperature 0, different text. Capping the physical
# batch below that keeps every row on the same kernel; llama_decode splits a step's
# n_batch tokens into ubatches itself (and, the streams being separate, into ubatches
# with the same number of tokens per sequence). Costs about 15% of prefill speed.
_MAX_UBATCH = 63
_FEATURES: frozenset[Feature] = frozenset(
    {"response_format", "logit_bias", "logprobs", "tools"})

def _import_llama() -> Any:
    try:
        import llama_cpp.llama_cpp as lib
    except ImportError as exc:
        raise EngineError(
            "llama-cpp-python is not installed: pip install 'inferno[llamacpp]'"
        ) from exc
    return lib


class LlamaCppEngine:
    def __init__(
        self,
        model_path: str,
        *,
        model_id: str,
        n_ctx: int = 4096,
        n_threads: int = 1,
        n_parallel: int = 4,
        n_batch: int = 512,
        aliases: tuple[str, ...] = (),
        quantize: str = "native",
        data_dir: Path | None = None,
        status: Callable[[str], None] | None = None,
        prefix_cache: bool = True,
        prefill_hold_ms: float = 200.0,
        gpu_layers: int = 0,
    ) -> None:
        for name, value in (("n_ctx", n_ctx), ("n_threads", n_threads),
                            ("n_parallel", n_parallel), ("n_batch", n_batch)):
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        self._path = model_path
        self._model_id = model_id
        self._n_ctx = n_ctx
        self._n_threads = n_threads
        self._n_parallel = n_parallel
        self._n_batch = n_batch
        self._aliases = aliases
        self._quantize = quantize
        self._data_dir = data_dir
        self._status = status
        self._prefix_cache = prefix_cache
        self._prefill_hold_s = max(0.0, prefill_hold_ms) / 1000
        self._gpu_layers = gpu_layers
        self._lib: Any = None
        self._model: Any = None
        self._ctx: Any = None
        self._vocab: Any = None
        self._sched: BatchScheduler | None = None
        self._grammars: GrammarCheck | None = None
        self._template: Any = None  # compiled jinja2 template, None when the GGUF has none
        self._bos_text = ""
        self._eos_text = ""
        self._bos_id = -1
        self._n_vocab = 0
        self._add_bos = False
        self._closed = False
        # Until load() reads the GGUF, assume the usual case (a chat template).
        self._info = self._make_info(has_chat_template=True)

    def _make_info(self, *, has_chat_template: bool, template_tools: bool = False
                   ) -> ModelInfo:
        return ModelInfo(
            id=self._model_id,
            path=self._path,
            context_length=self._n_ctx,
            has_chat_template=has_chat_template,
            aliases=self._aliases,
            features=_FEATURES,
            template_tools=template_tools,
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    # ---- lifecycle -------------------------------------------------------------------

    def load(self) -> None:
        if self._closed:
            raise EngineError("the engine is closed")
        if self._sched is not None:
            return
        lib = _import_llama()
        silence_llama_logs(lib)
        lib.llama_backend_init()
        path = self._weights_path()
        mparams = lib.llama_model_default_params()
        # -1: every layer (llama.cpp clamps a count above the model's to "all").
        mparams.n_gpu_layers = 1_000_000 if self._gpu_layers < 0 else self._gpu_layers
        if self._gpu_layers and not lib.llama_supports_gpu_offload():
            raise ConfigError(
                f"gpu_layers={self._gpu_layers}, but this llama.cpp build has no GPU "
                "support: rebuild it with make setup GPU=cuda (or GPU=vulkan)")
        model = lib.llama_model_load_from_file(str(path).encode(), mparams)
        if not model:
            raise EngineError(f"llama.cpp could not load the model at {str(path)!r}")
        try:
            ctx = self._new_context(lib, model, lib.LLAMA_FLASH_ATTN_TYPE_ENABLED)
            if not ctx:
                # Not every model/backend pair has flash attention; AUTO lets llama.cpp
                # fall back (batch invariance is then no longer guaranteed).
                ctx = self._new_context(lib, model, lib.LLAMA_FLASH_ATTN_TYPE_AUTO)
            if not ctx:
                raise EngineError(
                    f"llama.cpp could not create a context of {self._n_ctx} x "
                    f"{self._n_parallel} tokens for {self._path!r}"
                )
            if lib.llama_n_ctx_seq(ctx) < self._n_ctx:
                lib.llama_free(ctx)
                raise EngineError(
                    f"llama.cpp gave each sequence {lib.llama_n_ctx_seq(ctx)} tokens of "
                    f"context, fewer than n_ctx={self._n_ctx}"
                )
        except BaseException:
            lib.llama_model_free(model)
            raise
        self._lib, self._model, self._ctx = lib, model, ctx
        self._vocab = lib.llama_model_get_vocab(model)
        self._grammars = GrammarCheck(lib, self._vocab)
        self._n_vocab = lib.llama_vocab_n_tokens(self._vocab)
        self._bos_id = lib.llama_vocab_bos(self._vocab)
        self._add_bos = bool(lib.llama_vocab_get_add_bos(self._vocab)) and self._bos_id >= 0
        self._bos_text = self._special_text(self._bos_id)
        self._eos_text = self._special_text(lib.llama_vocab_eos(self._vocab))
        source = lib.llama_model_chat_template(model, None)
        self._template = self._compile_template(source)
        # A template that mentions tools renders them itself (see backend/tools.py).
        self._info = self._make_info(has_chat_template=self._template is not None,
                                     template_tools=bool(source) and b"tools" in source)
        self._sched = BatchScheduler(
            lib, ctx, self._vocab,
            n_batch=self._n_batch, n_parallel=self._n_parallel,
            n_ctx_seq=self._n_ctx, name=self._model_id,
            prefill_per_step=min(self._n_batch, _MAX_UBATCH),
            prefix_cache=self._prefix_cache,
            max_hold_s=self._prefill_hold_s,
            # A cross-stream copy moves all n_ctx cells: ~25 ms at 4096 for SmolLM2-135M,
            # the price of ~4 prompt tokens; ask for a wide margin (bench/README.md).
            min_copy=max(8, self._n_ctx // 256),
        )

    def _weights_path(self) -> Path:
        """The GGUF to load: the file itself, or its cached ``quantize`` copy."""
        from inferno.models.quantize import choose_weights, default_data_dir, ensure_quantized

        target = self._quantize
        if target == "auto":
            target, why = choose_weights(Path(self._path), parallel=self._n_parallel,
                                         gpu_layers=self._gpu_layers)
            log.info("quantize auto: %s weights (%s)", target, why)
            if self._status is not None:
                self._status(f"{target} weights ({why})")
        if target == "native":
            return Path(self._path)
        return ensure_quantized(Path(self._path), target,
                                self._data_dir or default_data_dir(),
                                threads=self._n_threads, status=self._status)

    def _new_context(self, lib: Any, model: Any, flash_attn: int) -> Any:
        cparams = lib.llama_context_default_params()
        # One KV stream of n_ctx cells per sequence: see "KV cache" in the module docstring.
        cparams.n_ctx = self._n_ctx * self._n_parallel
        cparams.n_seq_max = self._n_parallel
        cparams.kv_unified = False
        cparams.n_batch = self._n_batch
        cparams.n_ubatch = min(self._n_batch, _MAX_UBATCH)
        cparams.n_threads = self._n_threads
        cparams.n_threads_batch = self._n_threads
        cparams.flash_attn_type = flash_attn
        cparams.no_perf = True
        return lib.llama_init_from_model(model, cparams)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        sched = self._sched  # kept: stats() still reports the totals after close
        if sched is not None:
            # Joining waits for at most the decode step in flight; the worker then
            # ends every pending and active generation with finish_reason "abort".
            await asyncio.to_thread(sched.stop)
        lib = self._lib
        if lib is None:
            return
        if self._ctx is not None:
            lib.llama_free(self._ctx)
            self._ctx = None
        if self._model is not None:
            lib.llama_model_free(self._model)
            self._model = None

    def _require(self) -> BatchScheduler:
        if self._closed:
            raise EngineError("the engine is closed")
        if self._sched is None:
            raise EngineError("the model is not loaded")
        return self._sched

    # ---- text ------------------------------------------------------------------------

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        buf = ctypes.create_string_buffer(128)
        n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
        return buf.raw[: max(n, 0)].decode("utf-8", errors="replace")

    def tokenize(self, text: str) -> list[int]:
        self._require()
        lib = self._lib
        data = text.encode("utf-8")
        n_max = len(data) + 2
        buf = (lib.llama_token * n_max)()
        # parse_special: rendered chat templates contain <|im_start|> and friends.
        # add_special=False and BOS by hand, so a template that already starts with the
        # BOS text does not get a second one (and no model-added EOS ends a prompt).
        n = lib.llama_tokenize(self._vocab, data, len(data), buf, n_max, False, True)
        if n < 0:
            n_max = -n
            buf = (lib.llama_token * n_max)()
            n = lib.llama_tokenize(self._vocab, data, len(data), buf, n_max, False, True)
        tokens: list[int] = buf[:n]
        if self._add_bos and (not tokens or tokens[0] != self._bos_id):
            tokens.insert(0, self._bos_id)
        return tokens

    def _compile_template(self, source: bytes | None) -> Any:
        if not source:
            return None
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise jinja2.TemplateError(message)

        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, loader=jinja2.BaseLoader()
        )
        env.globals["raise_exception"] = raise_exception
        try:
            return env.from_string(source.decode("utf-8", errors="replace"))
        except jinja2.TemplateError as exc:
            raise EngineError(f"the model's chat template does not compile: {exc}") from exc

    def render_chat(self, messages: Sequence[dict[str, Any]],
                    tools: Sequence[dict[str, Any]] | None = None) -> str:
        self._require()
        if self._template is None:
            raise InvalidRequest("model has no chat template; use /v1/completions")
        import jinja2

        try:
            rendered: str = self._template.render(
                messages=[dict(m) for m in messages],
                add_generation_prompt=True,
                tools=list(tools) if tools else None,
                bos_token=self._bos_text,
                eos_token=self._eos_text,
            )
        except jinja2.TemplateError as exc:
            raise InvalidRequest(f"the chat template rejected the messages: {exc}",
                                 param="messages") from exc
        return rendered

    # ---- generation ------------------------------------------------------------------

    async def generate(self, prompt: str, params: SamplingParams) -> AsyncGenerator[Chunk, None]:
        # An async generator: all validation below runs at the first __anext__, so
        # errors surface before any chunk and before the request takes a queue place.
        sched = self._require()
        if not prompt:
            raise InvalidRequest("prompt must not be empty", param="prompt")
        if params.max_tokens is not None and params.max_tokens < 1:
            raise InvalidRequest("max_tokens must be at least 1", param="max_tokens")
        if params.temperature < 0:
            raise InvalidRequest("temperature must not be negative", param="temperature")
        if not 0.0 < params.top_p <= 1.0:
            raise InvalidRequest("top_p must be in (0, 1]", param="top_p")
        for tok, _ in params.logit_bias:
            if tok >= self._n_vocab:
                raise InvalidRequest(f"logit_bias names token {tok}, but the vocabulary has "
                                     f"{self._n_vocab} tokens.", param="logit_bias")
        grammar = params.grammar
        if grammar is None and params.response_format is not None:
            grammar = await asyncio.to_thread(grammar_for, params.response_format)
        if grammar is not None and self._grammars is not None:
            await asyncio.to_thread(self._grammars.require, grammar, "response_format")
        tokens = self.tokenize(prompt)
        n_prompt, n_ctx = len(tokens), self._n_ctx
        if params.max_tokens is None:
            if n_prompt >= n_ctx:
                raise ContextLengthExceeded(
                    f"This model's maximum context length is {n_ctx} tokens, but the "
                    f"prompt has {n_prompt} tokens, which leaves no room for a completion."
                )
            max_new = n_ctx - n_prompt
        else:
            max_new = params.max_tokens
            if n_prompt + max_new > n_ctx:
                raise ContextLengthExceeded(
                    f"This model's maximum context length is {n_ctx} tokens, but "
                    f"{n_prompt + max_new} tokens were requested ({n_prompt} in the prompt, "
                    f"{max_new} for the completion). Shorten the prompt or lower max_tokens."
                )
        seed = params.seed if params.seed is not None else secrets.randbelow(0xFFFFFFFF)
        config = SamplerConfig(
            temperature=params.temperature,
            top_p=params.top_p,
            # LLAMA_DEFAULT_SEED (0xFFFFFFFF) means "random" to llama.cpp; mask to 32 bits.
            seed=seed & 0xFFFFFFFF if (seed & 0xFFFFFFFF) != 0xFFFFFFFF else 0,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            grammar=grammar,
            logit_bias=params.logit_bias,
            logprobs=params.logprobs,
        )
        queue: asyncio.Queue[Item] = asyncio.Queue()
        seq = _Seq(tokens, max_new, config, asyncio.get_running_loop(), queue)
        sched.submit(seq)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            if not seq.finished:
                sched.cancel(seq)

    def stats(self) -> EngineStats:
        sched = self._sched
        if sched is None:
            return EngineStats(0, 0, self._n_parallel, 0, 0)
        return EngineStats(
            active=sched.active,
            queued=sched.queued,
            capacity=self._n_parallel,
            tokens_generated=sched.tokens_generated,
            prompt_tokens=sched.prompt_tokens,
            prompt_tokens_reused=sched.prompt_tokens_reused,
            prompt_tokens_computed=sched.prompt_tokens_computed,
        )
