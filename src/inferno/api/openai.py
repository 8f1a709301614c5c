"""OpenAI wire schemas: what a client may send, validated strictly, and the bodies we answer.

Validation is strict (a string is not a number) and bounded (``max_tokens``, ``n``,
sampling ranges, list lengths), because every field here ends up in an engine.
:func:`inferno.core.validation.parse_request` is the one place a pydantic error
becomes an OpenAI 400 naming the offending ``param``.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

MAX_STOP_SEQUENCES = 4
MAX_TOKENS_LIMIT = 1_000_000


class _Strict(BaseModel):
    # Unknown fields are tolerated (clients send vendor extensions) but never trusted.
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    n: Annotated[int, Field(ge=1, le=1)] = 1
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Annotated[str, Field(max_length=256)] | None = None

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        items = [v] if isinstance(v, str) else (v or [])
        if any(s == "" for s in items):
            raise ValueError("stop sequences must not be empty")
        return v

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=4096)]
    # The newer name for max_tokens; when both are given the smaller wins.
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None

    def token_limit(self) -> int | None:
        limits = [x for x in (self.max_tokens, self.max_completion_tokens) if x is not None]
        return min(limits) if limits else None


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    echo: bool = False

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def token_limit(self) -> int | None:
        # The legacy completions API defaults to 16 tokens.
        return self.max_tokens if self.max_tokens is not None else 16


MAX_EMBEDDING_INPUTS = 2048


class EmbeddingRequest(_Strict):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    # Token-id inputs parse (OpenAI accepts them) so a node can reject them by name.
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1, le=65536)] | None = None
    user: Annotated[str, Field(max_length=256)] | None = None

    @field_validator("input")
    @classmethod
    def _bounded(cls, v: str | list[Any]) -> str | list[Any]:
        if isinstance(v, list) and not v:
            raise PydanticCustomError("empty_input", "the list of inputs is empty")
        if isinstance(v, list) and len(v) > MAX_EMBEDDING_INPUTS:
            raise PydanticCustomError(
                "too_many_inputs", "at most {limit} inputs per request, got {n}",
                {"limit": MAX_EMBEDDING_INPUTS, "n": len(v)})
        return v


# ---------------------------------------------------------------- response bodies


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(rid: str, model: str, created: int, text: str, finish: str | None,
                    prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish,
        }],
        "usage": usage_dict(prompt_tokens, completion_tokens),
    }


def chat_chunk(rid: str, model: str, created: int, delta: dict[str, Any],
               finish: str | None) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def text_completion(rid: str, model: str, created: int, text: str, finish: str | None,
                    usage: dict[str, int] | None, *, chunk: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }
    if usage is not None or not chunk:
        body["usage"] = usage
    return body


def usage_chunk(rid: str, model: str, created: int, obj: str,
                prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """The final streamed chunk when ``stream_options.include_usage`` is set: no choices."""
    return {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage_dict(prompt_tokens, completion_tokens),
    }


def model_card(model_id: str, owned_by: str = "inferno", created: int | None = None,
               **extra: Any) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created or int(time.time()),
            "owned_by": owned_by, **extra}


def model_list(cards: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": cards}
