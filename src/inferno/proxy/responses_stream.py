"""A node's chat-completions SSE stream, re-told as Responses API stream events.

``response.created`` and ``response.in_progress`` open it; text deltas go into a
``message`` output item (``output_item.added``, ``content_part.added``,
``output_text.delta`` ... ``output_text.done``, ``content_part.done``,
``output_item.done``), each tool call into a ``function_call`` item
(``function_call_arguments.delta`` ... ``.done``). After the node's ``[DONE]`` the final
response is stored (when asked) and ``response.completed`` (or ``response.incomplete`` on
the token limit) ends the stream. A stream cut short (the proxy's in-band
``{"error": ...}`` event, or no ``[DONE]``) ends with ``error`` and ``response.failed``
instead: never a clean completion. Every event carries a ``sequence_number``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from inferno.core.errors import InfernoError
from inferno.net import SSEDecoder, sse_event
from inferno.proxy import responses_translate as tr

Keep = Callable[[dict[str, Any], dict[str, Any]], Awaitable[None]]


class ResponsesStream:
    __slots__ = ("_base", "_calls", "_decoder", "_ended", "_finish", "_inner", "_keep",
                 "_open", "_output", "_over", "_seq", "_started", "_usage")

    def __init__(self, inner: AsyncIterator[bytes], base: dict[str, Any], keep: Keep) -> None:
        self._inner = inner
        self._base = base
        self._keep = keep  # stores the finished response before response.completed is sent
        self._decoder = SSEDecoder()
        self._seq = 0
        self._started = self._over = self._ended = False
        self._output: list[dict[str, Any]] = []  # items so far (the open one is the last)
        self._open: dict[str, Any] | None = None  # the item being streamed into
        self._calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> item
        self._finish = "stop"
        self._usage = (0, 0)

    def __aiter__(self) -> ResponsesStream:
        return self

    async def __anext__(self) -> bytes:
        while not self._ended:
            try:
                chunk = await self._inner.__anext__()
            except StopAsyncIteration:
                self._ended = True
                if self._over:
                    break
                return b"".join(self._fail("The node's stream ended before the answer "
                                           "was complete."))
            out: list[bytes] = []
            for payload in self._decoder.feed(chunk):
                out += await self._on(payload)
            if out:
                return b"".join(out)
        raise StopAsyncIteration

    def _event(self, kind: str, **fields: Any) -> bytes:
        obj = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return sse_event(orjson.dumps(obj), kind)

    def _snapshot(self, status: str) -> dict[str, Any]:
        return {**self._base, "status": status, "error": None, "incomplete_details": None,
                "output": [], "usage": None}

    async def _on(self, payload: bytes) -> list[bytes]:
        if self._over:
            return []
        out = self._start()
        if payload == b"[DONE]":
            self._over = True
            return out + await self._complete()
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict) or "error" in obj:
            err = obj.get("error") if isinstance(obj, dict) else None
            message = err.get("message") if isinstance(err, dict) else None
            return out + self._fail(str(message or "The node sent an invalid stream event."))
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self._usage = (int(usage.get("prompt_tokens") or 0),
                           int(usage.get("completion_tokens") or 0))
        for choice in (obj.get("choices") or [])[:1]:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out += self._text(delta["content"])
            for call in delta.get("tool_calls") or []:
                out += self._call(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return out

    def _start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        return [self._event("response.created", response=self._snapshot("in_progress")),
                self._event("response.in_progress", response=self._snapshot("in_progress"))]

    def _text(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        item = self._open
        if item is None or item["type"] != "message":
            out += self._close()
            item = self._add(tr.text_item(tr.new_id("msg_"), "", "in_progress"))
            item["content"] = []
            out.append(self._event("response.output_item.added", output_index=self._index(),
                                   item=item))
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            item["content"].append(part)
            out.append(self._event("response.content_part.added", item_id=item["id"],
                                   output_index=self._index(), content_index=0, part=part))
        item["content"][0]["text"] += text
        out.append(self._event("response.output_text.delta", item_id=item["id"],
                               output_index=self._index(), content_index=0, delta=text,
                               logprobs=[]))
        return out

    def _call(self, call: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        fn = call.get("function") or {}
        item = self._calls.get(call.get("index", 0))
        if item is None:
            out += self._close()
            item = self._add(tr.call_item(tr.new_id("fc_"), call.get("id") or tr.new_id("call_"),
                                          fn.get("name") or "", "", "in_progress"))
            self._calls[call.get("index", 0)] = item
            out.append(self._event("response.output_item.added", output_index=self._index(),
                                   item=item))
        if fn.get("arguments"):
            item["arguments"] += fn["arguments"]
            out.append(self._event("response.function_call_arguments.delta",
                                   item_id=item["id"], output_index=self._output.index(item),
                                   delta=fn["arguments"]))
        return out

    def _add(self, item: dict[str, Any]) -> dict[str, Any]:
        self._output.append(item)
        self._open = item
        return item

    def _index(self) -> int:
        return len(self._output) - 1

    def _close(self) -> list[bytes]:
        item, self._open = self._open, None
        if item is None:
            return []
        index = self._output.index(item)
        status = "incomplete" if self._finish == "length" else "completed"
        item["status"] = status
        if item["type"] == "message":
            part = item["content"][0]
            return [self._event("response.output_text.done", item_id=item["id"],
                                output_index=index, content_index=0, text=part["text"],
                                logprobs=[]),
                    self._event("response.content_part.done", item_id=item["id"],
                                output_index=index, content_index=0, part=part),
                    self._event("response.output_item.done", output_index=index, item=item)]
        return [self._event("response.function_call_arguments.done", item_id=item["id"],
                            output_index=index, arguments=item["arguments"]),
                self._event("response.output_item.done", output_index=index, item=item)]

    async def _complete(self) -> list[bytes]:
        out = self._close()
        for item in self._output:  # tool calls left open by interleaved deltas
            if item["status"] == "in_progress":
                item["status"] = "completed"
        body = tr.finished(self._base, self._output, self._finish, *self._usage)
        try:
            await self._keep(body, tr.history_message(self._output))
        except InfernoError as exc:
            return out + self._fail(exc.message)
        kind = "response.incomplete" if body["status"] == "incomplete" else "response.completed"
        return [*out, self._event(kind, response=body)]

    def _fail(self, message: str) -> list[bytes]:
        self._over = True
        failed = {**self._snapshot("failed"), "output": self._output,
                  "error": {"code": "server_error", "message": message},
                  "completed_at": int(time.time())}
        return [*self._start(),
                self._event("error", code="server_error", message=message, param=None),
                self._event("response.failed", response=failed)]

    async def aclose(self) -> None:
        aclose = getattr(self._inner, "aclose", None)
        if aclose is not None:
            await aclose()
