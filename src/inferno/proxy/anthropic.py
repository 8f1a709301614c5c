"""The Anthropic Messages API, served by translating to and from chat completions.

A ``/v1/messages`` request becomes one chat-completions request (system prompt first,
``tool_use`` blocks as assistant ``tool_calls``, ``tool_result`` blocks as ``role: tool``
messages, tools as functions), sent through the proxy's usual pipeline (auth, limits,
routing, request log under ``/v1/messages``); the answer comes back as a ``message``, or as
Anthropic's stream events (:mod:`inferno.proxy.anthropic_stream`).

Refused with a 400 naming the parameter rather than ignored: image/document/thinking
content, server tools, ``top_k`` (the nodes sample without it), extended ``thinking``,
``output_config.effort``. ``output_config.format`` (structured outputs) becomes a
``json_schema`` response format.
``stop_reason: stop_sequence`` is reported when the node names the matched stop string in
the choice's ``stop_reason`` (as vLLM and Inferno's own nodes do); otherwise a stop ends as
``end_turn``.
``count_tokens`` asks a node for one token of the translated request and returns its
exact prompt-token count (the model's own template and tokenizer).
"""

from __future__ import annotations

from typing import Any

import orjson

from inferno.api import anthropic as an
from inferno.core.errors import (
    InfernoError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    UnsupportedParameter,
)
from inferno.core.validation import parse_request
from inferno.net import Request, Response, StreamingResponse
from inferno.proxy.anthropic_stream import AnthropicStream, new_id, stop_reason
from inferno.proxy.translated import Chat, read_answer

MESSAGES = "/v1/messages"
COUNT = "/v1/messages/count_tokens"


class AnthropicAPI:
    def __init__(self, chat: Chat) -> None:
        self._chat = chat  # serves a chat-completions body through the proxy's pipeline

    async def handle(self, req: Request, path: str) -> Response | StreamingResponse:
        try:
            if path not in (MESSAGES, COUNT):
                raise NotFound(f"Unknown route {req.method} {path}.")
            if req.method != "POST":
                raise MethodNotAllowed(f"{req.method} is not allowed on {path}; use POST.")
            if path == COUNT:
                return await self._count(req)
            return await self._create(req)
        except InfernoError as exc:
            shape(exc)
            raise

    async def _create(self, req: Request) -> Response | StreamingResponse:
        mreq = parse_request(an.MessagesRequest, req.body)
        chat = to_chat(mreq)
        chat["max_tokens"] = mreq.max_tokens
        for name in ("temperature", "top_p"):
            if (value := getattr(mreq, name)) is not None:
                chat[name] = value
        if mreq.stop_sequences:
            chat["stop"] = mreq.stop_sequences
        _output_config(mreq.output_config or {}, chat)
        if mreq.metadata is not None and mreq.metadata.user_id:
            chat["user"] = mreq.metadata.user_id
        if mreq.stream:
            chat["stream"] = True
            chat["stream_options"] = {"include_usage": True}
        resp = await self._chat(req, MESSAGES, chat)
        if resp.status != 200:
            return error_response(resp)
        if isinstance(resp, StreamingResponse):
            resp.chunks = AnthropicStream(resp.chunks, mreq.model, mreq.stop_sequences or [])
            return resp
        body = to_message(read_answer(resp), mreq.model, mreq.stop_sequences or [])
        return Response(200, orjson.dumps(body), headers=resp.headers)

    async def _count(self, req: Request) -> Response:
        creq = parse_request(an.CountTokensRequest, req.body)
        chat = to_chat(creq)
        chat["max_tokens"] = 1
        resp = await self._chat(req, COUNT, chat)
        if resp.status != 200 or isinstance(resp, StreamingResponse):
            return error_response(resp)
        usage = read_answer(resp).get("usage") or {}
        return Response.json({"input_tokens": int(usage.get("prompt_tokens") or 0)},
                             headers=resp.headers)


def _output_config(config: dict[str, Any], chat: dict[str, Any]) -> None:
    """Structured outputs (``output_config.format``) as a json_schema response_format."""
    if config.get("effort") is not None:
        raise UnsupportedParameter("'output_config.effort' is not supported.",
                                   param="output_config.effort")
    fmt = config.get("format")
    if fmt is None:
        return
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" \
            or not isinstance(fmt.get("schema"), dict):
        raise InvalidRequest("Invalid value for 'output_config.format': expected "
                             "{\"type\": \"json_schema\", \"schema\": {...}}.",
                             param="output_config.format")
    chat["response_format"] = {"type": "json_schema", "json_schema": {
        "name": "output", "schema": fmt["schema"], "strict": True}}


def shape(exc: InfernoError) -> InfernoError:
    """Render ``exc`` as Anthropic's error body wherever it is answered."""
    message = exc.message
    if exc.param and exc.param not in message:  # Anthropic's shape has no param field
        message = f"{exc.param}: {message}"
    exc.body_override = orjson.dumps(an.error_body(exc.status_code, message))
    return exc


def error_response(resp: Response | StreamingResponse) -> Response:
    """A node's or the pipeline's non-200 answer (an OpenAI error body) in Anthropic's shape."""
    message = "The request failed."
    if isinstance(resp, Response):
        try:
            err = orjson.loads(resp.body).get("error")
            message = str(err.get("message") or message) if isinstance(err, dict) else message
        except (orjson.JSONDecodeError, AttributeError):
            pass
    status = resp.status if resp.status != 200 else 502
    return Response(status, orjson.dumps(an.error_body(status, message)), headers=resp.headers)


def to_chat(mreq: an.MessagesRequest | an.CountTokensRequest) -> dict[str, Any]:
    """The chat-completions body (without sampling settings) for a Messages request."""
    if isinstance(mreq, an.MessagesRequest) and mreq.top_k is not None:
        raise UnsupportedParameter("'top_k' is not supported: the nodes sample with "
                                   "temperature and top_p only.", param="top_k")
    if mreq.thinking is not None and mreq.thinking.get("type") != "disabled":
        raise UnsupportedParameter("Extended thinking is not supported.", param="thinking")
    messages: list[dict[str, Any]] = []
    if mreq.system:
        system = mreq.system if isinstance(mreq.system, str) else \
            "\n\n".join(b.text for b in mreq.system)
        messages.append({"role": "system", "content": system})
    for i, msg in enumerate(mreq.messages):
        messages.extend(_turn(msg, i))
    chat: dict[str, Any] = {"model": mreq.model, "messages": messages}
    if mreq.tools:
        chat["tools"] = [_tool(t, i) for i, t in enumerate(mreq.tools)]
    choice = mreq.tool_choice
    if choice is not None:
        if choice.type == "tool":
            if not choice.name:
                raise UnsupportedParameter("tool_choice of type 'tool' needs a 'name'.",
                                           param="tool_choice.name")
            chat["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        else:
            chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
        if choice.disable_parallel_tool_use:
            chat["parallel_tool_calls"] = False
    return chat


def _tool(tool: an.Tool, i: int) -> dict[str, Any]:
    if tool.type not in (None, "custom"):
        raise UnsupportedParameter(f"Server tools ('{tool.type}') are not supported; only "
                                   "client tools with an input_schema.", param=f"tools.{i}.type")
    fn: dict[str, Any] = {"name": tool.name,
                          "parameters": tool.input_schema or {"type": "object"}}
    if tool.description:
        fn["description"] = tool.description
    return {"type": "function", "function": fn}


def _turn(msg: an.Message, i: int) -> list[dict[str, Any]]:
    if isinstance(msg.content, str):
        return [{"role": msg.role, "content": msg.content}]
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for j, block in enumerate(msg.content):
        if isinstance(block, an.TextBlock):
            texts.append(block.text)
        elif isinstance(block, an.ToolUseBlock) and msg.role == "assistant":
            calls.append({"id": block.id, "type": "function", "function": {
                "name": block.name, "arguments": orjson.dumps(block.input).decode()}})
        elif isinstance(block, an.ToolResultBlock) and msg.role == "user":
            results.append({"role": "tool", "tool_call_id": block.tool_use_id,
                            "content": _result_text(block, i, j)})
        else:
            raise UnsupportedParameter(
                f"Content blocks of type '{block.type}' are not supported in {msg.role} "
                "messages.", param=f"messages.{i}.content.{j}.type")
    out = list(results)  # tool results answer the previous assistant turn: they come first
    if msg.role == "assistant":
        turn: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
        if calls:
            turn["tool_calls"] = calls
        out.append(turn)
    elif texts or not results:
        out.append({"role": "user", "content": "\n\n".join(texts)})
    return out


def _result_text(block: an.ToolResultBlock, i: int, j: int) -> str:
    if block.content is None or isinstance(block.content, str):
        text = block.content or ""
    else:
        parts = []
        for k, part in enumerate(block.content):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise UnsupportedParameter(
                    "Tool results may hold text blocks only.",
                    param=f"messages.{i}.content.{j}.content.{k}")
            parts.append(part["text"])
        text = "\n\n".join(parts)
    return f"Error: {text}" if block.is_error else text


def to_message(chat: dict[str, Any], model: str, stops: list[str]) -> dict[str, Any]:
    choice = (chat.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    for call in msg.get("tool_calls") or []:
        fn = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or new_id("toolu_"),
                        "name": fn.get("name", ""), "input": _arguments(fn.get("arguments"))})
    reason, sequence = stop_reason(choice.get("finish_reason"), choice, stops)
    usage = chat.get("usage") or {}
    return {"id": new_id("msg_"), "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": reason, "stop_sequence": sequence,
            "usage": {"input_tokens": int(usage.get("prompt_tokens") or 0),
                      "output_tokens": int(usage.get("completion_tokens") or 0)}}


def _arguments(raw: Any) -> dict[str, Any]:
    """A tool call's arguments as the object Anthropic's ``input`` must be."""
    if isinstance(raw, dict):
        return raw
    try:
        value = orjson.loads(raw or "{}")
    except orjson.JSONDecodeError:
        return {"_raw": raw}
    return value if isinstance(value, dict) else {"value": value}
