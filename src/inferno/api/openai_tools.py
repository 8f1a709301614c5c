"""OpenAI request pieces beyond plain text: structured outputs and function tools.

``response_format`` and ``tools`` are validated for shape here; whether a schema is a
usable JSON Schema is decided by the engine that turns it into a grammar. Names follow
OpenAI's limits (function names: ``^[a-zA-Z0-9_-]{1,64}$``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_TOOLS = 128
_NAME = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class JsonSchemaSpec(_Strict):
    name: _NAME
    description: str | None = None
    # "schema" is a BaseModel attribute; the wire name is kept through the alias.
    schema_: Annotated[dict[str, Any] | None, Field(alias="schema")] = None
    strict: bool | None = None


class ResponseFormatText(_Strict):
    type: Literal["text"]


class ResponseFormatJsonObject(_Strict):
    type: Literal["json_object"]


class ResponseFormatJsonSchema(_Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema,
    Field(discriminator="type"),
]


class FunctionDef(_Strict):
    name: _NAME
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(_Strict):
    name: _NAME


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCall(_Strict):
    name: str
    arguments: str


class ToolCall(_Strict):
    id: str
    type: Literal["function"]
    function: FunctionCall


def response_format_dict(fmt: BaseModel | None) -> dict[str, Any] | None:
    """The wire form (``schema`` under its own name), or None for plain text."""
    if fmt is None or isinstance(fmt, ResponseFormatText):
        return None
    return fmt.model_dump(by_alias=True, exclude_none=True)
