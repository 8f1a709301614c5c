"""A node's chat-completions SSE stream, re-told as Anthropic Messages stream events.

``message_start`` and a ``ping`` open it; text deltas go into a ``text`` content block,
tool-call deltas each into a ``tool_use`` block (``input_json_delta``), a block closing
when the next kind starts; ``message_delta`` (stop reason, usage) and ``message_stop``
follow the node's ``[DONE]`` only, since the usage chunk comes after the finish chunk.
A node stream that ends any other way (the proxy's in-band ``{"error": ...}`` event after a
cut, or no ``[DONE]``) ends with an Anthropic ``error`` event instead, so SDKs raise rather
than return a truncated message.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import orjson

from inferno.api.anthropic import error_body
from inferno.net import SSEDecoder, sse_event

_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
         "function_call": "tool_use", "content_filter": "refusal"}


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def stop_reason(finish: str | None, choice: dict[str, Any],
                stops: list[str]) -> tuple[str, str | None]:
    """Anthropic's (stop_reason, stop_sequence) for a chat choice's finish."""
    matched = choice.get("stop_reason")
    if finish == "stop" and isinstance(matched, str) and matched in stops:
        return "stop_sequence", matched
    return _STOP.get(finish or "stop", "end_turn"), None


def event(kind: str, obj: dict[str, Any]) -> bytes:
    return sse_event(orjson.dumps(obj), kind)


def error_event(status: int, message: str) -> bytes:
    return event("error", error_body(status, message))


class AnthropicStream:
    __slots__ = ("_block", "_calls", "_choice", "_decoder", "_ended", "_finish", "_id",
                 "_inner", "_kind", "_model", "_over", "_started", "_stops", "_usage")

    def __init__(self, inner: AsyncIterator[bytes], model: str, stops: list[str]) -> None:
        self._inner = inner
        self._model = model
        self._stops = stops
        self._decoder = SSEDecoder()
        self._id = new_id("msg_")
        self._started = False
        self._block = -1  # index of the last content block opened
        self._kind = ""  # "text" or "tool" while a block is open, "" when none is
        self._calls: dict[int, int] = {}  # chat tool-call index -> content block index
        self._finish: str | None = None
        self._choice: dict[str, Any] = {}
        self._usage = (0, 0)
        self._over = False  # [DONE] or an error was told: nothing more to say
        self._ended = False

    def __aiter__(self) -> AnthropicStream:
        return self

    async def __anext__(self) -> bytes:
        while not self._ended:
            try:
                chunk = await self._inner.__anext__()
            except StopAsyncIteration:
                self._ended = True
                if self._over:
                    break
                return error_event(502, "The node's stream ended before the answer was "
                                        "complete.")
            out = [e for payload in self._decoder.feed(chunk) for e in self._on(payload)]
            if out:
                return b"".join(out)
        raise StopAsyncIteration

    def _on(self, payload: bytes) -> list[bytes]:
        if self._over:
            return []
        if payload == b"[DONE]":
            self._over = True
            return [*self._start(), *self._close(), self._end()]
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict) or "error" in obj:
            self._over = True
            err = obj.get("error") if isinstance(obj, dict) else None
            message = err.get("message") if isinstance(err, dict) else None
            return [*self._start(), error_event(
                502, str(message or "The node sent an invalid stream event."))]
        out = self._start()
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self._usage = (int(usage.get("prompt_tokens") or 0),
                           int(usage.get("completion_tokens") or 0))
        for choice in (obj.get("choices") or [])[:1]:
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                if self._kind != "text":
                    out += self._close()
                    out.append(self._open("text", {"type": "text", "text": ""}))
                out.append(event("content_block_delta", {
                    "type": "content_block_delta", "index": self._block,
                    "delta": {"type": "text_delta", "text": text}}))
            for call in delta.get("tool_calls") or []:
                out += self._tool_delta(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
                self._choice = choice
        return out

    def _tool_delta(self, call: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        index = call.get("index", 0)
        fn = call.get("function") or {}
        if index not in self._calls:
            out += self._close()
            out.append(self._open("tool", {
                "type": "tool_use", "id": call.get("id") or new_id("toolu_"),
                "name": fn.get("name") or "", "input": {}}))
            self._calls[index] = self._block
        args = fn.get("arguments")
        if args:
            out.append(event("content_block_delta", {
                "type": "content_block_delta", "index": self._calls[index],
                "delta": {"type": "input_json_delta", "partial_json": args}}))
        return out

    def _start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        message: dict[str, Any] = {"id": self._id, "type": "message", "role": "assistant",
                   "model": self._model, "content": [], "stop_reason": None,
                   "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
        return [event("message_start", {"type": "message_start", "message": message}),
                event("ping", {"type": "ping"})]

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        self._block += 1
        self._kind = kind
        return event("content_block_start", {"type": "content_block_start",
                                             "index": self._block, "content_block": block})

    def _close(self) -> list[bytes]:
        if not self._kind:
            return []
        self._kind = ""
        return [event("content_block_stop", {"type": "content_block_stop",
                                             "index": self._block})]

    def _end(self) -> bytes:
        reason, sequence = stop_reason(self._finish, self._choice, self._stops)
        prompt, completion = self._usage
        return event("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": {"input_tokens": prompt, "output_tokens": completion},
        }) + event("message_stop", {"type": "message_stop"})

    async def aclose(self) -> None:
        aclose = getattr(self._inner, "aclose", None)
        if aclose is not None:
            await aclose()
