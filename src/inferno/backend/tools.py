"""Function calling on local models: prompting, forcing and reading tool calls.

**Prompt.** A model whose chat template handles tools (its source mentions ``tools``,
as Qwen's and Hermes' do) gets the tools and the conversation's ``tool_calls`` /
``tool`` messages through its own template. Others (SmolLM2's plain ChatML) get the
documented fallback: a system message listing the functions (name, description, JSON
Schema of the parameters) and asking for calls written as
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``; earlier assistant calls are
rendered the same way, and ``tool`` results become user turns wrapped in
``<tool_response>`` - the convention of the Hermes/Qwen templates, so either way the
answer has one syntax.

**Output.** ``tool_choice: "required"`` or a named function: the answer is constrained
by a grammar (``response_format`` with a JSON Schema: ``{"name": <one of the tools>,
"arguments": <that tool's parameters>}``), so the call is valid JSON with a known name
and schema-valid arguments. ``"auto"``: the answer is read as it comes; once it starts
(after whitespace) with ``<tool_call>`` it is held and parsed at the end, each block one
call (unparsable blocks or unknown names leave the answer as plain text); anything else
streams as text. ``"none"``: the tools are not offered. ``parallel_tool_calls: false``
keeps the first call only.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
from collections.abc import Callable
from typing import Any

from inferno.api import openai as oa
from inferno.backend.engines.base import ModelInfo, SamplingParams
from inferno.core.errors import InvalidRequest, UnsupportedParameter

TAG, END = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_FALLBACK = (
    "You can call these functions; each is given with the JSON Schema of its arguments:\n"
    "{tools}\n"
    'To call a function, answer with only <tool_call>{{"name": <function name>, '
    '"arguments": <arguments object>}}</tool_call>, one such block per call. {rule}'
)
_RULES = {"auto": "Otherwise answer normally.", "required": "You must call a function."}


def prepare(creq: oa.ChatCompletionRequest, info: ModelInfo, params: SamplingParams, *,
            provider: bool) -> tuple[SamplingParams, str | None,
                                     Callable[[], ToolOutput | None]]:
    """(params, tool mode, a reader per choice) for a chat request; 4xx for bad tool use.
    ``provider``: a remote engine, which gets the tools as they are."""
    mode = tool_mode(creq)
    if mode is None:
        return params, None, lambda: None
    if "tools" not in info.features:
        raise UnsupportedParameter(f"The model '{creq.model}' does not support 'tools'.",
                                   param="tools")
    names = {t.function.name for t in creq.tools or []}
    if mode not in ("auto", "required") and mode not in names:
        raise InvalidRequest(f"tool_choice names the function '{mode}', which is not in "
                             "'tools'.", param="tool_choice")
    choice = creq.tool_choice
    if provider:
        params = dataclasses.replace(
            params, tools=tuple(tool_dicts(creq)), parallel_tool_calls=creq.parallel_tool_calls,
            tool_choice=choice if isinstance(choice, str | None) else choice.model_dump())
    elif mode != "auto":  # a grammar makes the answer one valid call
        params = dataclasses.replace(params, response_format=call_format(creq, mode))
    reader = "provider" if provider else mode
    return params, mode, lambda: ToolOutput(reader, names, creq.parallel_tool_calls)


def tool_mode(creq: oa.ChatCompletionRequest) -> str | None:
    """``None`` (no tools in play), ``"auto"``, ``"required"`` or the forced name."""
    if not creq.tools:
        return None
    choice = creq.tool_choice or "auto"
    if choice == "none":
        return None
    if isinstance(choice, str):
        return choice
    return choice.function.name


def tool_dicts(creq: oa.ChatCompletionRequest) -> list[dict[str, Any]]:
    return [t.model_dump(exclude_none=True) for t in creq.tools or []]


def call_format(creq: oa.ChatCompletionRequest, mode: str) -> dict[str, Any]:
    """The ``response_format`` whose grammar forces one valid call (required / named)."""
    calls = []
    for tool in creq.tools or []:
        fn = tool.function
        if mode != "required" and fn.name != mode:
            continue
        calls.append({"type": "object", "additionalProperties": False,
                      "required": ["name", "arguments"],
                      "properties": {"name": {"const": fn.name},
                                     "arguments": fn.parameters or {"type": "object"}}})
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    return {"type": "json_schema", "json_schema": {"name": "tool_call", "schema": schema}}


def messages_for(creq: oa.ChatCompletionRequest, mode: str | None,
                 template_tools: bool) -> list[dict[str, Any]]:
    """The conversation as the template gets it (see the module docstring)."""
    if template_tools:
        return [_native(m) for m in creq.messages]
    out: list[dict[str, Any]] = []
    for m in creq.messages:
        if m.role == "tool":
            out.append({"role": "user",
                        "content": f"<tool_response>\n{m.text()}\n</tool_response>"})
        elif m.tool_calls:
            blocks = "".join(TAG + json.dumps({"name": c.function.name,
                                               "arguments": _args(c.function.arguments)})
                             + END for c in m.tool_calls)
            out.append({"role": m.role, "content": m.text() + blocks})
        else:
            out.append({"role": m.role, "content": m.text()})
    if mode is None:
        return out
    listing = "\n".join(json.dumps({"name": t.function.name,
                                    "description": t.function.description or "",
                                    "parameters": t.function.parameters or {}})
                        for t in creq.tools or [])
    rule = _RULES.get(mode, f"You must call the function {mode}.")
    system = _FALLBACK.format(tools=listing, rule=rule)
    if out and out[0]["role"] in ("system", "developer"):
        out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + system}
    else:
        out.insert(0, {"role": "system", "content": system})
    return out


def openai_messages(creq: oa.ChatCompletionRequest) -> list[dict[str, Any]]:
    """The conversation in OpenAI's own shape (for remote providers)."""
    return [_native(m, parse_args=False) for m in creq.messages]


def _native(m: oa.ChatMessage, *, parse_args: bool = True) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": m.role, "content": m.text()}
    if m.tool_calls:
        msg["tool_calls"] = [{"id": c.id, "type": "function", "function": {
            "name": c.function.name,
            "arguments": _args(c.function.arguments) if parse_args else c.function.arguments}}
            for c in m.tool_calls]
    if m.tool_call_id is not None:
        msg["tool_call_id"] = m.tool_call_id
    return msg


def _args(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


class ToolOutput:
    """One choice's text, read for tool calls (see the module docstring)."""

    def __init__(self, mode: str, names: set[str], parallel: bool) -> None:
        """``mode`` "provider": a remote provider made the calls (``given``), the text is
        streamed as it is."""
        self.forced = mode not in ("auto", "provider")
        self._names = names
        self._parallel = parallel
        self._buf = ""
        self._state = {"auto": "undecided", "provider": "text"}.get(mode, "tool")
        self.given: list[dict[str, Any]] = []

    def feed(self, text: str) -> str:
        """The part of ``text`` that can be streamed as content now."""
        if self._state == "text":
            return text
        self._buf += text
        if self._state == "undecided":
            head = self._buf.lstrip()
            if head.startswith(TAG):
                self._state = "tool"
            elif not TAG.startswith(head):
                self._state = "text"
                out, self._buf = self._buf, ""
                return out
        return ""

    def finish(self) -> tuple[str, list[dict[str, Any]] | None]:
        """(text still to send as content, the calls or None)."""
        text, self._buf = self._buf, ""
        if self._state == "text":
            return text, self.given or None
        if self.forced:
            calls = [c for c in [self._call(text)] if c is not None]
        else:
            calls = [c for c in (self._call(b) for b in _BLOCK.findall(text))
                     if c is not None]
        if not calls:
            return text, None
        return "", calls if self._parallel else calls[:1]

    def _call(self, raw: str) -> dict[str, Any] | None:
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("name") not in self._names:
            return None
        args = data.get("arguments", {})
        return {"id": "call_" + secrets.token_hex(12), "type": "function",
                "function": {"name": data["name"],
                             "arguments": args if isinstance(args, str) else json.dumps(args)}}
