"""One request's generations turned into OpenAI bodies: choices, stop strings, logprobs.

A request with ``n`` choices runs ``n`` engine generations at once (a batching engine
decodes them in the same steps); each has its own stop matcher. Streams interleave the
choices' chunks as they come, each chunk naming its ``index``; usage counts the prompt
once and the completions of every choice.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from inferno.api import openai as oa
from inferno.backend.engines.base import Chunk, TokenLogprob
from inferno.backend.stops import StopMatcher
from inferno.backend.tools import ToolOutput


@dataclass(frozen=True, slots=True)
class Piece:
    text: str
    finish: str | None  # set on a choice's last piece only
    logprobs: tuple[TokenLogprob, ...] = ()


class Choice:
    """One generation: the engine's chunks as pieces of text, stop strings applied."""

    def __init__(self, gen: AsyncGenerator[Chunk, None], first: Chunk,
                 stops: tuple[str, ...], tools: ToolOutput | None = None) -> None:
        self.gen = gen
        self.tools = tools  # reads the text for tool calls (chat with tools only)
        self.first = first
        self.prompt_tokens = first.prompt_tokens
        self.completion_tokens = 0
        self.finish: str | None = None  # how it ended, once it has
        self._stops = StopMatcher(stops)

    @property
    def matched(self) -> str | None:
        """The stop string that ended this choice (vLLM's ``stop_reason``), if one did."""
        return self._stops.matched

    async def pieces(self) -> AsyncIterator[Piece]:
        try:
            chunk: Chunk | None = self.first
            while chunk is not None:
                if chunk.tool_calls and self.tools is not None:
                    self.tools.given.extend(chunk.tool_calls)
                self.completion_tokens = chunk.completion_tokens
                # Remote providers may only know the prompt's size at the end.
                self.prompt_tokens = chunk.prompt_tokens or self.prompt_tokens
                text = self._stops.feed(chunk.text)
                if self._stops.stopped:
                    self.finish = "stop"
                    yield Piece(text, "stop", chunk.logprobs)
                    return
                if chunk.finish_reason is not None:
                    self.finish = _finish(chunk.finish_reason)
                    yield Piece(text + self._stops.flush(), self.finish, chunk.logprobs)
                    return
                if text or chunk.logprobs:
                    yield Piece(text, None, chunk.logprobs)
                chunk = await anext(self.gen, None)
            self.finish = "stop"
            yield Piece(self._stops.flush(), "stop")
        finally:
            await self.gen.aclose()


class Turn:
    def __init__(self, endpoint: str, creq: oa.ChatCompletionRequest | oa.CompletionRequest,
                 choices: list[Choice]) -> None:
        self.endpoint = endpoint
        self.creq = creq
        self.choices = choices
        self.id = ("chatcmpl-" if endpoint == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.top = (creq.top_logprobs or 0) if isinstance(creq, oa.ChatCompletionRequest) \
            else (creq.logprobs or 0)
        self.want_logprobs = bool(creq.logprobs is not None and creq.logprobs is not False)
        self.ttft = 0.0  # seconds, for the metrics
        self.traceparent: str | None = None  # the caller's W3C trace context

    def trace(self, status: int = 200) -> dict[str, Any]:
        """What a trace of this turn records beyond the metrics (see BackendMetrics)."""
        finishes = {c.finish for c in self.choices if c.finish is not None}
        return {"endpoint": self.endpoint, "traceparent": self.traceparent, "status": status,
                "prompt_tokens": self.prompt_tokens,
                "finish_reason": ",".join(sorted(finishes)) or None}

    @property
    def prompt_tokens(self) -> int:
        return self.choices[0].prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices)

    async def merged(self) -> AsyncIterator[tuple[int, Piece]]:
        """Every choice's pieces, as they come, with the choice's index."""
        if len(self.choices) == 1:
            async for piece in self.choices[0].pieces():
                yield 0, piece
            return
        queue: asyncio.Queue[tuple[int, Piece | Exception | None]] = asyncio.Queue()

        async def pump(i: int, choice: Choice) -> None:
            try:
                async for piece in choice.pieces():
                    queue.put_nowait((i, piece))
            except Exception as exc:
                queue.put_nowait((i, exc))
            queue.put_nowait((i, None))

        tasks = [asyncio.create_task(pump(i, c)) for i, c in enumerate(self.choices)]
        try:
            left = len(tasks)
            while left:
                i, item = await queue.get()
                if item is None:
                    left -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield i, item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for choice in self.choices:  # those whose pump never started
                await choice.gen.aclose()

    async def collect(self) -> dict[str, Any]:
        n = len(self.choices)
        texts: list[list[str]] = [[] for _ in range(n)]
        lps: list[list[TokenLogprob]] = [[] for _ in range(n)]
        finish: list[str | None] = [None] * n
        async for i, piece in self.merged():
            texts[i].append(piece.text)
            lps[i].extend(piece.logprobs)
            finish[i] = piece.finish or finish[i]
        model = self.creq.model
        if self.endpoint == "chat":
            choices = []
            for i in range(n):
                text, calls = "".join(texts[i]), None
                tools = self.choices[i].tools
                if tools is not None:
                    streamed = tools.feed(text)
                    rest, calls = tools.finish()
                    text = streamed + rest
                choices.append(oa.chat_choice(
                    i, None if calls else text, "tool_calls" if calls else finish[i],
                    tool_calls=calls, logprobs=self._chat_lp(lps[i])))
                _stop_reason(choices[-1], self.choices[i].matched)
            return oa.chat_completion(self.id, model, self.created, choices,
                                      self.prompt_tokens, self.completion_tokens)
        echo = self.creq.prompt_text() if isinstance(self.creq, oa.CompletionRequest) \
            and self.creq.echo else ""
        out = [oa.text_choice(i, echo + "".join(texts[i]), finish[i],
                              self._text_lp(lps[i], len(echo))) for i in range(n)]
        for i, choice in enumerate(out):
            _stop_reason(choice, self.choices[i].matched)
        return oa.text_completion(self.id, model, self.created, out,
                                  oa.usage_dict(self.prompt_tokens, self.completion_tokens))

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        model, rid, created = self.creq.model, self.id, self.created
        chat = self.endpoint == "chat"
        offsets = [0] * len(self.choices)
        if chat:
            for i in range(len(self.choices)):
                yield oa.chat_chunk(rid, model, created, {"role": "assistant", "content": ""},
                                    None, index=i)
        async for i, piece in self.merged():
            text, finish = piece.text, piece.finish
            if chat:
                tools = self.choices[i].tools
                if tools is not None:
                    text = tools.feed(text)
                if text or piece.logprobs:
                    yield oa.chat_chunk(rid, model, created, {"content": text}, None,
                                        index=i, logprobs=self._chat_lp(piece.logprobs))
                if finish and tools is not None:
                    rest, calls = tools.finish()
                    if rest:
                        yield oa.chat_chunk(rid, model, created, {"content": rest}, None,
                                            index=i)
                    if calls:
                        finish = "tool_calls"
                        delta = {"tool_calls": [{"index": k, **c} for k, c in enumerate(calls)]}
                        yield oa.chat_chunk(rid, model, created, delta, None, index=i)
                if finish:
                    last = oa.chat_chunk(rid, model, created, {}, finish, index=i)
                    _stop_reason(last["choices"][0], self.choices[i].matched)
                    yield last
            elif text or finish or piece.logprobs:
                lp = self._text_lp(piece.logprobs, offsets[i])
                offsets[i] += sum(len(t.token) for t in piece.logprobs)
                choice = oa.text_choice(i, text, finish, lp)
                if finish:
                    _stop_reason(choice, self.choices[i].matched)
                yield oa.text_completion(rid, model, created, [choice], None, chunk=True)
        if self.creq.include_usage:
            obj = "chat.completion.chunk" if chat else "text_completion"
            yield oa.usage_chunk(rid, model, created, obj, self.prompt_tokens,
                                 self.completion_tokens)

    def _chat_lp(self, entries: tuple[TokenLogprob, ...] | list[TokenLogprob]
                 ) -> list[dict[str, Any]] | None:
        if not self.want_logprobs:
            return None
        return [{"token": t.token, "logprob": t.logprob, "bytes": list(t.raw),
                 "top_logprobs": [{"token": tok, "logprob": lp, "bytes": list(raw)}
                                  for tok, lp, raw in t.top[:self.top]]} for t in entries]

    def _text_lp(self, entries: tuple[TokenLogprob, ...] | list[TokenLogprob],
                 offset: int) -> dict[str, Any] | None:
        if not self.want_logprobs:
            return None
        offsets = []
        for t in entries:
            offsets.append(offset)
            offset += len(t.token)
        return {"tokens": [t.token for t in entries],
                "token_logprobs": [t.logprob for t in entries],
                "top_logprobs": [{tok: lp for tok, lp, _ in t.top[:self.top]} for t in entries],
                "text_offset": offsets}


def _stop_reason(choice: dict[str, Any], matched: str | None) -> None:
    # Beyond OpenAI's fields, as vLLM answers: which stop string ended the text (the
    # Anthropic Messages API reports it as stop_sequence).
    if matched is not None:
        choice["stop_reason"] = matched


def _finish(reason: str) -> str:
    # "abort" means the engine shut down under us; the client sees a normal end of text.
    return "stop" if reason == "abort" else reason
