"""OpenAI wire schemas: what a client may send, validated strictly, and the bodies we answer.

Validation is strict (a string is not a number) and bounded (``max_tokens``, ``n``,
sampling ranges, list lengths), because every field here ends up in an engine.
:func:`inferno.core.validation.parse_request` is the one place a pydantic error
becomes an OpenAI 400 naming the offending ``param``.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from inferno.api.openai_tools import (
    MAX_TOOLS,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolChoice,
    response_format_dict,
)

MAX_STOP_SEQUENCES = 4
MAX_TOKENS_LIMIT = 1_000_000
MAX_CHOICES = 8  # n: extra sequences share the batch, so keep a request's share bounded
MAX_LOGIT_BIAS = 300

# OpenAI parameters this API knows but does not implement: a request naming one gets a
# 400 unsupported_parameter instead of an answer that silently ignores it.
_UNSUPPORTED = ("audio", "prediction", "web_search_options", "functions", "function_call",
                "reasoning_effort", "verbosity", "suffix")


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
    tool_calls: Annotated[list[ToolCall], Field(max_length=MAX_TOOLS)] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Strict):
    include_usage: bool | None = False


class _Sampling(_Strict):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] = 1
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
    logit_bias: Annotated[dict[str, float], Field(max_length=MAX_LOGIT_BIAS)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        # OpenAI's optional parameters are nullable: null means "not given" (the openai
        # SDK sends temperature=None as null). Required ones then read as missing.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (v or {}).items():
            if not key.isdigit():
                raise PydanticCustomError("logit_bias_key", "keys must be token ids, got "
                                          "{key!r}", {"key": key})
            if not -100.0 <= bias <= 100.0:
                raise PydanticCustomError("logit_bias_range", "biases must be within "
                                          "[-100, 100], got {bias}", {"bias": bias})
        return v

    def bias_list(self) -> tuple[tuple[int, float], ...]:
        return tuple((int(k), float(b)) for k, b in (self.logit_bias or {}).items())

    def unsupported(self) -> str | None:
        """The first OpenAI parameter given that this API does not implement, if any."""
        extra = self.model_extra or {}
        for name in _UNSUPPORTED:
            if name in extra:
                return name
        modalities = extra.get("modalities")
        if modalities is not None and modalities != ["text"]:
            return "modalities"
        best_of = extra.get("best_of")
        if best_of is not None and best_of != self.n:
            return "best_of"
        return None

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
    response_format: ResponseFormat | None = None
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

    def format_dict(self) -> dict[str, Any] | None:
        return response_format_dict(self.response_format)

    def token_limit(self) -> int | None:
        limits = [x for x in (self.max_tokens, self.max_completion_tokens) if x is not None]
        return min(limits) if limits else None


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None

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


def chat_choice(index: int, text: str | None, finish: str | None, *,
                tool_calls: list[dict[str, Any]] | None = None,
                logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"index": index, "message": message,
            "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None},
            "finish_reason": finish}


def chat_completion(rid: str, model: str, created: int, choices: list[dict[str, Any]],
                    prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage_dict(prompt_tokens, completion_tokens),
    }


def chat_chunk(rid: str, model: str, created: int, delta: dict[str, Any],
               finish: str | None, *, index: int = 0,
               logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": index, "delta": delta,
                     "logprobs": None if logprobs is None else {"content": logprobs,
                                                                "refusal": None},
                     "finish_reason": finish}],
    }


def text_choice(index: int, text: str, finish: str | None,
                logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def text_completion(rid: str, model: str, created: int, choices: list[dict[str, Any]],
                    usage: dict[str, int] | None, *, chunk: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
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
