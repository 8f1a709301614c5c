"""Google Gemini behind a node, spoken in Gemini's own wire format.

Requests go to ``{base}/models/{model}:streamGenerateContent?alt=sse`` (server-sent events
of ``GenerateContentResponse``; the stream ends when the connection's body ends, there is
no ``[DONE]``). Translation, both ways:

- OpenAI messages -> ``contents``: ``assistant`` becomes role ``model``, ``user``/``tool``
  stay ``user``; ``system``/``developer`` messages are joined into ``systemInstruction``;
- sampling -> ``generationConfig`` (``maxOutputTokens``, ``temperature``, ``topP``,
  ``seed``, ``presencePenalty``, ``frequencyPenalty``); ``response_format`` ->
  ``responseMimeType: application/json``, with a ``json_schema``'s schema as
  ``responseJsonSchema`` (Gemini's JSON Schema field, which takes standard schemas);
- function tools -> ``tools[0].functionDeclarations`` (parameters as
  ``parametersJsonSchema``), ``tool_choice`` -> ``toolConfig.functionCallingConfig``
  (``auto`` AUTO, ``none`` NONE, ``required`` ANY, a named function ANY with
  ``allowedFunctionNames``); assistant ``tool_calls`` -> ``functionCall`` parts, ``tool``
  messages -> ``functionResponse`` parts (named after the call they answer); answers'
  ``functionCall`` parts -> tool calls with fresh ``call_`` ids;
- each event's ``candidates[0].content.parts[*].text`` is one chunk; ``finishReason``
  ``STOP`` -> ``stop``, ``MAX_TOKENS`` -> ``length``, anything else (``SAFETY``, ...) ->
  ``stop``; ``usageMetadata`` gives the token counts; a ``promptFeedback.blockReason``
  becomes a 400 naming it.

The API key goes in the ``x-goog-api-key`` header (never the ``?key=`` query parameter,
which would put it in URLs and access logs). Errors map as in :mod:`.remote_openai`.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncGenerator, Sequence
from typing import Any
from urllib.parse import quote

import orjson

from inferno.backend.engines.base import Chunk, Feature, FinishReason, SamplingParams
from inferno.backend.engines.remote_openai import RemoteEngineBase
from inferno.core.errors import InvalidRequest, UpstreamProtocolError

_FINISH: dict[str, FinishReason] = {"STOP": "stop", "MAX_TOKENS": "length"}


def to_gemini(messages: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """OpenAI chat messages as Gemini ``contents`` (+ ``systemInstruction``)."""
    system = [m["content"] for m in messages if m["role"] in ("system", "developer")]
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id -> function name, for the responses
    for m in messages:
        if m["role"] in ("system", "developer"):
            continue
        role = "model" if m["role"] == "assistant" else "user"
        parts: list[dict[str, Any]] = [{"text": m["content"]}] if m.get("content") else []
        for call in m.get("tool_calls") or []:
            fn = call["function"]
            names[call["id"]] = fn["name"]
            parts.append({"functionCall": {"name": fn["name"], "args": _args(fn["arguments"])}})
        if m["role"] == "tool":
            parts = [{"functionResponse": {"name": names.get(m.get("tool_call_id") or "", ""),
                                           "response": {"content": m.get("content") or ""}}}]
        if not parts:
            parts = [{"text": ""}]
        if contents and contents[-1]["role"] == role:  # Gemini wants turns to alternate
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    return body


def _args(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return {}


def _tools(params: SamplingParams) -> dict[str, Any]:
    if not params.tools:
        return {}
    decls = []
    for tool in params.tools:
        fn = tool["function"]
        decl: dict[str, Any] = {"name": fn["name"], "description": fn.get("description", "")}
        if fn.get("parameters"):
            decl["parametersJsonSchema"] = fn["parameters"]
        decls.append(decl)
    choice = params.tool_choice or "auto"
    config: dict[str, Any] = {"mode": {"auto": "AUTO", "none": "NONE"}.get(
        choice, "ANY") if isinstance(choice, str) else "ANY"}
    if isinstance(choice, dict):
        config["allowedFunctionNames"] = [choice["function"]["name"]]
    return {"tools": [{"functionDeclarations": decls}],
            "toolConfig": {"functionCallingConfig": config}}


class GeminiEngine(RemoteEngineBase):
    provider = "gemini"
    features: frozenset[Feature] = frozenset({"response_format", "tools"})

    def _headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self._key} if self._key else {}

    def _path(self) -> str:
        return f"/models/{quote(self._remote_model, safe='')}:streamGenerateContent?alt=sse"

    @staticmethod
    def _config(params: SamplingParams) -> dict[str, Any]:
        cfg: dict[str, Any] = {"temperature": params.temperature, "topP": params.top_p}
        if params.max_tokens is not None:
            cfg["maxOutputTokens"] = params.max_tokens
        if params.seed is not None:
            cfg["seed"] = params.seed
        if params.presence_penalty:
            cfg["presencePenalty"] = params.presence_penalty
        if params.frequency_penalty:
            cfg["frequencyPenalty"] = params.frequency_penalty
        fmt = params.response_format
        if fmt is not None:
            cfg["responseMimeType"] = "application/json"
            schema = (fmt.get("json_schema") or {}).get("schema")
            if schema is not None:
                cfg["responseJsonSchema"] = schema
        return cfg

    def generate_chat(self, messages: Sequence[dict[str, Any]],
                      params: SamplingParams) -> AsyncGenerator[Chunk, None]:
        if not any(m["role"] not in ("system", "developer") for m in messages):
            raise InvalidRequest("Gemini needs at least one user message.", param="messages")
        body = {**to_gemini(messages), "generationConfig": self._config(params),
                **_tools(params)}
        return self._stream(self._path(), body,
                            sum(len(m.get("content") or "") for m in messages))

    def generate(self, prompt: str, params: SamplingParams) -> AsyncGenerator[Chunk, None]:
        body = {"contents": [{"role": "user", "parts": [{"text": prompt}]}],
                "generationConfig": self._config(params)}
        return self._stream(self._path(), body, len(prompt))

    def _parse_event(self, data: bytes) -> tuple[str, FinishReason | None, tuple[int, int] | None]:
        event = self._event_json(data)
        feedback = event.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            raise InvalidRequest(f"Gemini blocked the prompt ({feedback['blockReason']}).",
                                 param="messages")
        usage = event.get("usageMetadata")
        counts = None
        if isinstance(usage, dict) and "promptTokenCount" in usage:
            counts = (int(usage.get("promptTokenCount") or 0),
                      int(usage.get("candidatesTokenCount") or 0))
        candidates = event.get("candidates") or []
        if not candidates:
            return "", None, counts
        cand = candidates[0]
        if not isinstance(cand, dict):
            raise UpstreamProtocolError("gemini sent a malformed candidate.")
        parts = (cand.get("content") or {}).get("parts") or []
        text = "".join(p.get("text", "") for p in parts
                       if isinstance(p, dict) and not p.get("thought"))
        reason = cand.get("finishReason")
        finish = _FINISH.get(reason, "stop") if reason else None
        return text, finish, counts

    def _tool_deltas(self, data: bytes) -> list[dict[str, Any]]:
        candidates = orjson.loads(data).get("candidates") or []  # parsed before: valid JSON
        cand = candidates[0] if candidates and isinstance(candidates[0], dict) else {}
        out = []
        for part in (cand.get("content") or {}).get("parts") or []:
            call = part.get("functionCall") if isinstance(part, dict) else None
            if isinstance(call, dict) and isinstance(call.get("name"), str):
                out.append({"id": "call_" + secrets.token_hex(12), "type": "function",
                            "function": {"name": call["name"],
                                         "arguments": json.dumps(call.get("args") or {})}})
        return out
