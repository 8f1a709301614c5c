"""Validating our bodies against OpenAI's published response schemas.

The schemas live outside the project at ``../shared/openai/openai-schemas.json`` (see the
README beside them); tests that need them skip, naming the path, when the file is absent.
OpenAPI's ``nullable: true`` is read as "or null". Legacy completion stream chunks carry
``finish_reason: null`` until the last one, as OpenAI's live API does (root
``CompletionChunk``).
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import pytest

SCHEMAS = Path(__file__).resolve().parents[1].parent / "shared" / "openai" / "openai-schemas.json"


def _nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_nullable(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def _validators() -> dict[str, Any]:
    if not SCHEMAS.is_file():
        pytest.skip(f"OpenAI's schemas are not at {SCHEMAS}")
    import jsonschema

    schemas = json.loads(SCHEMAS.read_text())["schemas"]
    chunk = copy.deepcopy(schemas["CreateCompletionResponse"])
    reason = chunk["properties"]["choices"]["items"]["properties"]["finish_reason"]
    reason["nullable"] = True
    schemas["CompletionChunk"] = chunk
    converted = _nullable(schemas)
    return {name: jsonschema.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": {"schemas": converted}})
        for name in converted}


def check(body: dict[str, Any], root: str) -> None:
    """Raises (naming the path) unless ``body`` follows OpenAI's schema ``root``, e.g.
    ``CreateChatCompletionResponse``, ``CreateChatCompletionStreamResponse``,
    ``CreateCompletionResponse``, ``CompletionChunk``, ``Model``, ``ErrorResponse``."""
    errors = sorted(_validators()[root].iter_errors(body), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        raise AssertionError(f"{root} at {list(first.path)}: {first.message}\n{body}")
