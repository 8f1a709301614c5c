"""OpenAI Responses API wire schemas (``POST /v1/responses``).

What a client may send, validated so that a bad field is a 400 naming it. Item, content
and tool kinds the gateway cannot serve (images, files, built-in tools) parse, so that the
proxy can refuse them by name rather than ignore them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True, populate_by_name=True)


class TextContent(_Strict):
    type: Literal["input_text", "output_text"]
    text: str


class OtherContent(_Strict):
    type: str  # input_image, input_file, refusal, ...


def _content_tag(v: Any) -> str:
    kind = v.get("type") if isinstance(v, dict) else getattr(v, "type", None)
    return "text" if kind in ("input_text", "output_text") else "other"


Content = Annotated[Annotated[TextContent, Tag("text")] | Annotated[OtherContent, Tag("other")],
                    Discriminator(_content_tag)]


class MessageItem(_Strict):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: list[Content] | str


class FunctionCallItem(_Strict):
    type: Literal["function_call"]
    call_id: Annotated[str, Field(min_length=1, max_length=256)]
    name: Annotated[str, Field(min_length=1, max_length=256)]
    arguments: str


class FunctionCallOutputItem(_Strict):
    type: Literal["function_call_output"]
    call_id: Annotated[str, Field(min_length=1, max_length=256)]
    output: str | list[dict[str, Any]]


class OtherItem(_Strict):
    type: str  # reasoning (skipped), item_reference, web_search_call, ... (refused)


def _item_tag(v: Any) -> str:
    kind = v.get("type", "message") if isinstance(v, dict) else getattr(v, "type", None)
    return kind if kind in ("message", "function_call", "function_call_output") else "other"


Item = Annotated[
    Annotated[MessageItem, Tag("message")] | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[OtherItem, Tag("other")],
    Discriminator(_item_tag)]


class Tool(_Strict):
    type: str  # "function"; built-in tools (web_search, file_search, ...) are refused
    name: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionChoice(_Strict):
    type: str
    name: str | None = None


class TextFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: Annotated[str, Field(max_length=64)] | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class TextConfig(_Strict):
    format: TextFormat | None = None


class ResponsesRequest(_Strict):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    input: str | Annotated[list[Item], Field(max_length=4096)] | None = None
    instructions: str | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["auto", "none", "required"] | FunctionChoice | None = None
    text: TextConfig | None = None
    max_output_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    metadata: Annotated[dict[str, str], Field(max_length=16)] | None = None
    store: bool | None = None
    previous_response_id: Annotated[str, Field(max_length=64)] | None = None
    stream: bool | None = None
    parallel_tool_calls: bool | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
    background: bool | None = None
    conversation: Any = None
    prompt: Any = None
    reasoning: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None
