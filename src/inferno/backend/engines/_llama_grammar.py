"""Grammars for the llama.cpp engine: OpenAI's ``response_format`` as GBNF.

``json_object`` is any JSON object; ``json_schema`` is the schema converted by
llama-cpp-python's own converter (``llama_cpp.llama_grammar``, imported here lazily: this
module is only used by the llama.cpp engine). Every schema is enforced, ``strict`` or not:
a grammar is cheaper to follow than to repair. A schema the converter cannot turn into a
grammar, or a grammar llama.cpp cannot parse, is a 400 naming ``response_format``.
Conversions and parse checks are cached: clients send the same schema again and again.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from inferno.core.errors import InvalidRequest

_ANY_OBJECT: dict[str, Any] = {"type": "object"}


def grammar_for(response_format: dict[str, Any]) -> str:
    """GBNF for a ``json_object`` / ``json_schema`` response format."""
    if response_format.get("type") == "json_object":
        schema: Any = _ANY_OBJECT
    else:
        schema = (response_format.get("json_schema") or {}).get("schema") or _ANY_OBJECT
    return schema_grammar(schema, param="response_format")


def schema_grammar(schema: Any, *, param: str) -> str:
    try:
        remote = _remote_ref(schema)
    except RecursionError as exc:
        raise InvalidRequest("The JSON schema is nested too deeply.", param=param) from exc
    if remote is not None:
        # The converter would fetch https:// refs from the node: only local refs.
        raise InvalidRequest(f"Only local $ref (starting with '#') are supported, got "
                             f"{remote[:200]!r}.", param=param)
    try:
        text = json.dumps(schema)  # key order kept: it is the order of the output
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"The JSON schema is not serialisable: {exc}", param=param) from exc
    try:
        return _convert(text)
    except Exception as exc:  # the converter raises whatever its code hits
        raise InvalidRequest(f"The JSON schema cannot be turned into a grammar: "
                             f"{type(exc).__name__}: {exc}", param=param) from exc


def _remote_ref(node: Any) -> str | None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
            return str(ref)
        children: Any = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = _remote_ref(child)
        if found is not None:
            return found
    return None


@functools.lru_cache(maxsize=256)
def _convert(schema_json: str) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    gbnf: str = json_schema_to_gbnf(schema_json)
    return gbnf


class GrammarCheck:
    """Whether llama.cpp parses a grammar (building a sampler and freeing it), cached."""

    def __init__(self, lib: Any, vocab: Any) -> None:
        self._lib = lib
        self._vocab = vocab
        self.ok = functools.lru_cache(maxsize=256)(self._parses)

    def _parses(self, gbnf: str) -> bool:
        sampler = self._lib.llama_sampler_init_grammar(self._vocab, gbnf.encode(), b"root")
        if not sampler:
            return False
        self._lib.llama_sampler_free(sampler)
        return True

    def require(self, gbnf: str, param: str) -> None:
        if not self.ok(gbnf):
            raise InvalidRequest("llama.cpp could not parse the grammar built for this "
                                 "request.", param=param)
