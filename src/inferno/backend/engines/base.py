"""The contract between a backend node and the engine that runs its model.

An engine owns one loaded model and schedules generation for it. The node's HTTP layer
does everything engine-independent: request validation, chat templating decisions,
stop strings, SSE framing, usage accounting, and cancellation on client disconnect.

Contract:
- ``load()`` is called once before any request; it may block for seconds, so the node
  calls it in a worker thread. ``close()`` releases the model; generations still running
  end with ``finish_reason="abort"``.
- ``tokenize()`` is cheap and thread-safe enough to call from the event loop.
- ``generate()`` returns an async iterator of :class:`Chunk`. It yields as tokens are
  produced (never buffering a whole answer), ends after a chunk whose ``finish_reason``
  is ``"stop"`` (end of sequence) or ``"length"`` (``max_tokens`` reached). Closing the
  iterator early (``aclose()``, or cancelling the task that iterates it) must free the
  sequence's slot within one decode step: this is how stop strings and client
  disconnects end a generation.
- Requests beyond the engine's parallel capacity wait in a FIFO queue (fair: first come,
  first served); ``stats()`` reports the queue depth.
- The output of one greedy sequence (temperature 0) must not depend on what else runs.
- ``SamplingParams`` beyond plain sampling (``response_format``/``grammar``,
  ``logit_bias``, ``logprobs``) is only sent to an engine whose ``ModelInfo.features``
  names it; the HTTP layer refuses the rest with 400 ``unsupported_parameter``. An engine
  with ``logprobs`` puts one :class:`TokenLogprob` per generated token on its chunks.
- Errors are :mod:`inferno.core.errors` classes: ``ContextLengthExceeded`` when the prompt
  plus ``max_tokens`` does not fit, ``EngineError`` for anything the engine itself broke.
- ``ModelInfo.capabilities`` says which endpoints the model serves (``chat``,
  ``completions``, ``embeddings``); the HTTP layer answers a clear 400 for the others.
- Optional ``generate_chat(messages, params)`` (:class:`ChatEngine`): engines that forward
  to a remote provider take the messages as messages instead of a rendered template; when
  an engine has it, the HTTP layer calls it for chat instead of ``render_chat`` +
  ``generate``. Its first chunk may not know the prompt's token count yet: the last
  chunk's ``prompt_tokens`` is the one reported.

Embedding engines (:class:`EmbeddingEngine`) share ``info``/``load``/``close``/``stats``
and have ``embed(texts)`` instead of generation: one unit-or-not vector per text, in
order, and the prompt tokens they cost. Too-long texts raise ``ContextLengthExceeded``
naming the limit; concurrent calls may be batched together by the engine.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

FinishReason = Literal["stop", "length", "abort"]
Capability = Literal["chat", "completions", "embeddings", "classifications"]
GENERATIVE: frozenset[Capability] = frozenset({"chat", "completions"})
# Request features beyond plain sampling, named as the OpenAI parameter that asks for them.
Feature = Literal["response_format", "logit_bias", "logprobs", "tools"]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int | None = None  # None: up to the end of the context window
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # OpenAI's response_format (json_object / json_schema), as sent: remote engines pass
    # it on; the llama.cpp engine turns it into ``grammar`` when that is not given.
    response_format: dict[str, Any] | None = None
    grammar: str | None = None  # GBNF every sampled token must follow
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias) pairs
    logprobs: int | None = None  # None: none; k: the chosen token's and the k most likely
    # Function tools, for engines that pass them to a provider (OpenAI's shapes); local
    # engines get tools through the prompt and a grammar instead (backend/tools.py).
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float
    raw: bytes  # the token's bytes (OpenAI's "bytes"): a token may be part of a character
    top: tuple[tuple[str, float, bytes], ...] = ()  # (token, logprob, bytes), best first


@dataclass(frozen=True, slots=True)
class Chunk:
    """New text since the previous chunk (may be empty), with running token counts."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason | None = None
    logprobs: tuple[TokenLogprob, ...] = ()  # the tokens this chunk adds, when asked
    # Whole calls a provider made (id, type, function{name, arguments}), on the last chunk.
    tool_calls: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str  # the name clients use in "model"
    path: str
    context_length: int  # the node's context window (n_ctx), in tokens
    owned_by: str = "inferno"
    has_chat_template: bool = True
    aliases: tuple[str, ...] = field(default_factory=tuple)
    capabilities: frozenset[Capability] = GENERATIVE
    # USD per million tokens, for cost-aware routing (remote providers); 0 for local models.
    price_per_mtok_input: float = 0.0
    price_per_mtok_output: float = 0.0
    dimensions: int | None = None  # embedding models: the vector length
    features: frozenset[Feature] = frozenset()  # see the module docstring
    template_tools: bool = False  # the chat template renders tools and tool messages


@dataclass(frozen=True, slots=True)
class EngineStats:
    active: int  # sequences generating now
    queued: int  # requests waiting for a slot
    capacity: int  # sequences that can generate at once
    tokens_generated: int  # since start, completion tokens only
    prompt_tokens: int  # since start
    # Engines with prompt-prefix KV reuse: prompt tokens taken from the cache / decoded.
    prompt_tokens_reused: int = 0
    prompt_tokens_computed: int = 0


class Engine(Protocol):
    @property
    def info(self) -> ModelInfo: ...

    def load(self) -> None: ...

    async def close(self) -> None: ...

    def tokenize(self, text: str) -> list[int]: ...

    def render_chat(self, messages: Sequence[dict[str, Any]],
                    tools: Sequence[dict[str, Any]] | None = None) -> str:
        """The chat template applied to ``[{"role", "content"}, ...]``, ready to generate from;
        ``tools`` (OpenAI's function tools) only when ``info.template_tools``."""
        ...

    def generate(self, prompt: str, params: SamplingParams) -> AsyncGenerator[Chunk, None]: ...

    def stats(self) -> EngineStats: ...


@runtime_checkable
class ChatEngine(Protocol):
    """An engine that takes chat messages as they are (remote providers)."""

    def generate_chat(self, messages: Sequence[dict[str, Any]],
                      params: SamplingParams) -> AsyncGenerator[Chunk, None]:
        """``messages`` in OpenAI's shape (``tool_calls``, ``tool_call_id`` included)."""
        ...


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    vectors: npt.NDArray[np.float32] | list[list[float]]  # one row per input text
    prompt_tokens: int


class EmbeddingEngine(Protocol):
    @property
    def info(self) -> ModelInfo: ...

    def load(self) -> None: ...

    async def close(self) -> None: ...

    async def embed(self, texts: Sequence[str]) -> EmbeddingResult: ...

    def stats(self) -> EngineStats: ...


AnyEngine = Engine | EmbeddingEngine
