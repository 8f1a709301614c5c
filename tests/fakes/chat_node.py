"""A scripted chat-completions node on 127.0.0.1 for the API-translation tests.

It records every request body it receives (so tests can assert what the proxy sent) and
answers each ``POST /v1/chat/completions`` with the next queued :class:`Reply` (text,
tool calls, a finish reason, or a stream cut short), whole or as OpenAI SSE chunks.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from inferno.api.node import Registration
from inferno.net import HttpServer, Request, Response, StreamingResponse
from inferno.proxy.gateway import Gateway


@dataclass
class Reply:
    text: str | None = "Hello there!"
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    finish: str | None = None  # default: "tool_calls" with calls, else "stop"
    cut: bool = False  # stream: stop after the first content, without [DONE]
    prompt_tokens: int = 7
    extra_choice: dict[str, Any] = field(default_factory=dict)
    raw: bytes | None = None  # non-streamed: this body, as it is, instead of a completion


class ChatNode:
    def __init__(self, model: str = "fake-model") -> None:
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.replies: list[Reply] = []
        self.server = HttpServer(self._handle)

    async def start(self, gw: Gateway | None = None) -> ChatNode:
        await self.server.start("127.0.0.1", 0)
        if gw is not None:
            gw.pool.upsert(Registration(id="chat-node", address=f"127.0.0.1:{self.server.port}",
                                        metrics_port=6100, models=[self.model],
                                        lease_seconds=60))
        return self

    async def stop(self) -> None:
        await self.server.stop(grace=1.0)

    @property
    def last(self) -> dict[str, Any]:
        return self.requests[-1]

    async def _handle(self, req: Request) -> Response | StreamingResponse:
        if req.method == "GET":
            return Response.json({"object": "list", "data": [{"id": self.model}]})
        body = orjson.loads(req.body)
        self.requests.append(body)
        reply = self.replies.pop(0) if self.replies else Reply()
        finish = reply.finish or ("tool_calls" if reply.calls else "stop")
        calls = [{"id": cid, "type": "function",
                  "function": {"name": name, "arguments": json.dumps(args)}}
                 for cid, name, args in reply.calls]
        usage = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": 5,
                 "total_tokens": reply.prompt_tokens + 5}
        if reply.raw is not None:
            return Response(200, reply.raw)
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": reply.text}
            if calls:
                message["tool_calls"] = calls
            return Response.json({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1,
                "model": self.model, "usage": usage,
                "choices": [{"index": 0, "message": message, "finish_reason": finish,
                             "logprobs": None, **reply.extra_choice}]})
        return StreamingResponse(self._stream(reply, calls, finish, usage))

    async def _stream(self, reply: Reply, calls: list[dict[str, Any]], finish: str,
                      usage: dict[str, int]) -> AsyncIterator[bytes]:
        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            obj = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                   "model": self.model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **extra}]}
            return b"data: " + orjson.dumps(obj) + b"\n\n"

        yield chunk({"role": "assistant", "content": ""})
        text = reply.text or ""
        for i in range(0, len(text), 4):
            yield chunk({"content": text[i:i + 4]})
            if reply.cut:
                return  # no [DONE]: the proxy's relay reports the cut
        for i, call in enumerate(calls):
            args = call["function"]["arguments"]
            half = len(args) // 2
            yield chunk({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                         "function": {"name": call["function"]["name"],
                                                      "arguments": args[:half]}}]})
            yield chunk({"tool_calls": [{"index": i, "function": {"arguments": args[half:]}}]})
        yield chunk({}, finish, **reply.extra_choice)
        yield b"data: " + orjson.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk",
                                        "created": 1, "model": self.model, "choices": [],
                                        "usage": usage}) + b"\n\n"
        yield b"data: [DONE]\n\n"
