"""Responses API <-> chat completions: the request, the input items and the output items.

Input items become chat messages (``function_call`` items as assistant ``tool_calls``,
``function_call_output`` items as ``role: tool`` messages, ``reasoning`` items skipped);
function tools, ``tool_choice`` and ``text.format`` map onto their chat counterparts. What
has no counterpart (images, files, built-in tools, background mode, reasoning effort) is
a 400 naming the parameter. A chat answer becomes output items: one ``message`` with the
text, one ``function_call`` per tool call.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson

from inferno.api import responses as rs
from inferno.core.errors import InvalidRequest, UnsupportedParameter

_PREFIX = {"function_call": "fc_", "function_call_output": "fco_"}


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def refuse_unsupported(rreq: rs.ResponsesRequest) -> None:
    if rreq.background:
        raise UnsupportedParameter("Background responses are not supported.",
                                   param="background")
    for name in ("conversation", "prompt"):
        if getattr(rreq, name) is not None:
            raise UnsupportedParameter(f"'{name}' is not supported; send the input itself "
                                       "(or previous_response_id).", param=name)
    reasoning = rreq.reasoning or {}
    for name in ("effort", "summary", "generate_summary"):
        if reasoning.get(name) is not None:
            raise UnsupportedParameter("Reasoning settings are not supported.",
                                       param=f"reasoning.{name}")


def turn_messages(rreq: rs.ResponsesRequest) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(chat messages, input items as stored and listed) for this request's ``input``."""
    if rreq.input is None:
        return [], []
    if isinstance(rreq.input, str):
        first: dict[str, Any] = {
            "type": "message", "id": new_id("msg_"), "role": "user", "status": "completed",
            "content": [{"type": "input_text", "text": rreq.input}]}
        return [{"role": "user", "content": rreq.input}], [first]
    messages: list[dict[str, Any]] = []
    items: list[dict[str, Any]] = []
    for i, item in enumerate(rreq.input):
        stored = item.model_dump(by_alias=True, exclude_none=True)
        if isinstance(item, rs.MessageItem):
            messages.append({"role": item.role, "content": _text(item, i)})
            if isinstance(item.content, str):
                kind = "output_text" if item.role == "assistant" else "input_text"
                stored["content"] = [{"type": kind, "text": item.content}]
            stored.setdefault("status", "completed")
        elif isinstance(item, rs.FunctionCallItem):
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            stored.setdefault("status", "completed")
        elif isinstance(item, rs.FunctionCallOutputItem):
            messages.append({"role": "tool", "tool_call_id": item.call_id,
                             "content": _output_text(item, i)})
        elif item.type == "reasoning":
            continue  # no model here reasons in a separate channel
        else:
            raise UnsupportedParameter(f"Input items of type '{item.type}' are not supported.",
                                       param=f"input.{i}.type")
        stored.setdefault("id", new_id(_PREFIX.get(item.type, "msg_")))
        items.append(stored)
    return messages, items


def _text(item: rs.MessageItem, i: int) -> str:
    if isinstance(item.content, str):
        return item.content
    parts = []
    for j, part in enumerate(item.content):
        if not isinstance(part, rs.TextContent):
            raise UnsupportedParameter(f"Content of type '{part.type}' is not supported; "
                                       "only text.", param=f"input.{i}.content.{j}.type")
        parts.append(part.text)
    return "".join(parts)


def _output_text(item: rs.FunctionCallOutputItem, i: int) -> str:
    if isinstance(item.output, str):
        return item.output
    texts = [p.get("text") for p in item.output]
    if not all(isinstance(t, str) for t in texts):
        raise UnsupportedParameter("Function call outputs may hold text only.",
                                   param=f"input.{i}.output")
    return "".join(t for t in texts if isinstance(t, str))


def chat_options(rreq: rs.ResponsesRequest) -> dict[str, Any]:
    """Everything of the chat body but the messages."""
    chat: dict[str, Any] = {"model": rreq.model}
    if rreq.tools:
        chat["tools"] = [_tool(t, i) for i, t in enumerate(rreq.tools)]
    choice = rreq.tool_choice
    if isinstance(choice, str):
        chat["tool_choice"] = choice
    elif choice is not None:
        if choice.type != "function" or not choice.name:
            raise UnsupportedParameter(f"tool_choice of type '{choice.type}' is not "
                                       "supported; use auto, none, required or a function.",
                                       param="tool_choice")
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    fmt = rreq.text.format if rreq.text is not None else None
    if fmt is not None and fmt.type == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.schema_ is None:
            raise InvalidRequest("Missing required parameter: 'text.format.schema'.",
                                 param="text.format.schema")
        spec: dict[str, Any] = {"name": fmt.name or "response", "schema": fmt.schema_}
        if fmt.strict is not None:
            spec["strict"] = fmt.strict
        if fmt.description:
            spec["description"] = fmt.description
        chat["response_format"] = {"type": "json_schema", "json_schema": spec}
    options = {"max_tokens": rreq.max_output_tokens, "temperature": rreq.temperature,
               "top_p": rreq.top_p, "user": rreq.user,
               "parallel_tool_calls": rreq.parallel_tool_calls}
    chat.update((k, v) for k, v in options.items() if v is not None)
    if rreq.stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def _tool(tool: rs.Tool, i: int) -> dict[str, Any]:
    if tool.type != "function":
        raise UnsupportedParameter(f"Tools of type '{tool.type}' are not supported; only "
                                   "function tools.", param=f"tools.{i}.type")
    if not tool.name:
        raise InvalidRequest(f"Missing required parameter: 'tools.{i}.name'.",
                             param=f"tools.{i}.name")
    fn: dict[str, Any] = {"name": tool.name,
                          "parameters": tool.parameters or {"type": "object", "properties": {}}}
    if tool.description:
        fn["description"] = tool.description
    if tool.strict is not None:
        fn["strict"] = tool.strict
    return {"type": "function", "function": fn}


def echo(rreq: rs.ResponsesRequest, store: bool) -> dict[str, Any]:
    """The request's settings as a response object repeats them (all but status/output)."""
    fmt = rreq.text.format if rreq.text is not None else None
    tools = [{"type": "function", "name": t.name, "description": t.description,
              "parameters": t.parameters, "strict": t.strict} for t in rreq.tools or []]
    choice: Any = rreq.tool_choice or "auto"
    if not isinstance(choice, str):
        choice = {"type": "function", "name": choice.name}
    return {
        "background": False, "instructions": rreq.instructions,
        "max_output_tokens": rreq.max_output_tokens, "metadata": rreq.metadata or {},
        "model": rreq.model,
        "parallel_tool_calls": True if rreq.parallel_tool_calls is None
        else rreq.parallel_tool_calls,
        "previous_response_id": rreq.previous_response_id,
        "reasoning": {"effort": None, "summary": None}, "store": store,
        "temperature": 1.0 if rreq.temperature is None else rreq.temperature,
        "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt
                 else {"type": "text"}},
        "tool_choice": choice, "tools": tools,
        "top_p": 1.0 if rreq.top_p is None else rreq.top_p, "truncation": "disabled",
        "user": rreq.user,
    }


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion}


def text_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [],
                         "logprobs": []}]}


def call_item(item_id: str, call_id: str, name: str, arguments: str,
              status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def output_from_chat(chat: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """(output items, the assistant chat message for the history, finish_reason)."""
    choice = (chat.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    finish = choice.get("finish_reason") or "stop"
    status = "incomplete" if finish == "length" else "completed"
    output: list[dict[str, Any]] = []
    if msg.get("content"):
        output.append(text_item(new_id("msg_"), msg["content"], status))
    calls = msg.get("tool_calls") or []
    for call in calls:
        fn = call.get("function") or {}
        args = fn.get("arguments")
        output.append(call_item(new_id("fc_"), call.get("id") or new_id("call_"),
                                fn.get("name", ""), args if isinstance(args, str)
                                else orjson.dumps(args or {}).decode(), "completed"))
    return output, history_message(output), finish


def history_message(output: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant chat message that output items amount to (for previous_response_id)."""
    text = "".join(c["text"] for item in output if item["type"] == "message"
                   for c in item["content"])
    calls = [{"id": item["call_id"], "type": "function",
              "function": {"name": item["name"], "arguments": item["arguments"]}}
             for item in output if item["type"] == "function_call"]
    msg: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        msg["tool_calls"] = calls
    return msg


def finished(base: dict[str, Any], output: list[dict[str, Any]], finish: str, prompt: int,
             completion: int) -> dict[str, Any]:
    incomplete = finish == "length"
    return {**base, "status": "incomplete" if incomplete else "completed",
            "completed_at": int(time.time()), "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "output": output, "usage": usage(prompt, completion)}
