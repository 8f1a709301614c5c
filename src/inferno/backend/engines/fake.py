"""A deterministic engine for tests and demos: no model, same contract as the real ones.

It "generates" by cycling through a fixed vocabulary seeded by the prompt, one word per
token, so output is reproducible and cheap. ``token_delay`` simulates decode time; the
FIFO queue and ``parallel`` slots behave like a real batching engine's.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from inferno.backend.engines._slots import Slots
from inferno.backend.engines.base import (
    Chunk,
    EngineStats,
    FinishReason,
    ModelInfo,
    SamplingParams,
)
from inferno.core.errors import ContextLengthExceeded, InvalidRequest

_WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "Paris", "is",
          "a", "city", "in", "France", "and", "it", "has", "many", "old", "bridges")


class FakeEngine:
    def __init__(self, *, model_id: str = "fake-model", n_ctx: int = 2048, parallel: int = 4,
                 token_delay: float = 0.0, eos_after: int | None = None,
                 aliases: tuple[str, ...] = (), path: str = "(fake)") -> None:
        # path: a file whose size stands for the model's memory (memory-budget tests).
        self._info = ModelInfo(id=model_id, path=path, context_length=n_ctx, aliases=aliases)
        self._delay = token_delay
        self._eos_after = eos_after
        self._slots = Slots(parallel)
        self._generated = 0
        self._prompted = 0

    @property
    def info(self) -> ModelInfo:
        return self._info

    def load(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def tokenize(self, text: str) -> list[int]:
        return [len(w) for w in text.split()] or [0]

    def render_chat(self, messages: Sequence[dict[str, Any]],
                    tools: Sequence[dict[str, Any]] | None = None) -> str:
        return "".join(f"<{m['role']}> {m['content']}\n" for m in messages) + "<assistant>"

    def stats(self) -> EngineStats:
        return EngineStats(active=self._slots.active, queued=self._slots.queued,
                           capacity=self._slots.capacity,
                           tokens_generated=self._generated, prompt_tokens=self._prompted)

    async def generate(self, prompt: str, params: SamplingParams) -> AsyncGenerator[Chunk, None]:
        if not prompt:
            raise InvalidRequest("The prompt is empty.", param="prompt")
        n_prompt = len(self.tokenize(prompt))
        budget = self._info.context_length - n_prompt
        if budget <= 0 or (params.max_tokens is not None and params.max_tokens > budget):
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self._info.context_length} tokens; "
                f"the prompt has {n_prompt} tokens and max_tokens is {params.max_tokens}.",
                param="max_tokens" if budget > 0 else "messages")
        limit = params.max_tokens if params.max_tokens is not None else budget
        digest = hashlib.sha256(f"{prompt}|{params.seed if params.temperature else ''}".encode())
        start = digest.digest()[0]
        async with self._slots.hold():
            self._prompted += n_prompt
            for i in range(limit):
                if self._delay:
                    await asyncio.sleep(self._delay)
                else:
                    await asyncio.sleep(0)
                self._generated += 1
                word = _WORDS[(start + i) % len(_WORDS)]
                done = i + 1 == limit
                eos = self._eos_after is not None and i + 1 >= self._eos_after
                finish: FinishReason | None = "stop" if eos else ("length" if done else None)
                yield Chunk(text=("" if i == 0 else " ") + word, prompt_tokens=n_prompt,
                            completion_tokens=i + 1, finish_reason=finish)
                if finish:
                    return

