"""Validating a JSON request body into a pydantic model, with OpenAI-style 400s.

This is the one place a pydantic ``ValidationError`` or a JSON syntax error becomes an
:class:`InvalidRequest` that names the offending ``param``: :func:`parse_request` for
request bodies, :func:`invalid_request` for a ``ValidationError`` caught elsewhere (node
registrations). Settings files use :func:`field_errors` to name fields the same way.
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from inferno.core.errors import InvalidRequest

_M = TypeVar("_M", bound=BaseModel)


def parse_request(model: type[_M], body: bytes) -> _M:
    """Validate a JSON body into ``model`` or raise a 400 that names the offending field."""
    if not body:
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise invalid_request(exc) from exc


_NOT_JSON = "We could not parse the JSON body of your request. The body must be a JSON object."
_NOT_OBJECT = "The request body must be a JSON object."


def json_object(body: bytes, *, empty: bool = False) -> dict[str, Any]:
    """A JSON object body, read without a model (the proxy's hot path, admin routes);
    ``empty=True`` takes no body as ``{}``."""
    try:
        data: Any = orjson.loads(body or (b"{}" if empty else body))
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(_NOT_JSON) from exc
    if not isinstance(data, dict):
        raise InvalidRequest(_NOT_OBJECT)
    return data


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _is_type_tag(part: object) -> bool:
    # Union branches appear in the location ("str", "list[str]"); they are not params.
    text = str(part)
    return isinstance(part, str) and (text in _TYPE_TAGS or "[" in text or "-" in text)


def _param(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc if not _is_type_tag(p))


def field_errors(exc: ValidationError) -> list[tuple[str, str]]:
    """``(field, message)`` per error, the field as a dotted path (``pools.0.model``);
    every part is kept: a settings mapping's keys (``node_types.local-cpu``) are names."""
    return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors(include_url=False)]


def invalid_request(exc: ValidationError) -> InvalidRequest:
    """A 400 naming the first offending ``param`` (its location joined with '.')."""
    first = exc.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return InvalidRequest(_NOT_JSON)
    if first["type"] == "model_type" and not first["loc"]:
        return InvalidRequest(_NOT_OBJECT)
    param = _param(first["loc"])
    # Union errors name each branch; the message of the first branch is the useful one.
    msg = first["msg"]
    value = first.get("input")
    scalar = isinstance(value, int | float | bool) or value is None
    shown = repr(value) if scalar else type(value).__name__
    if first["type"] == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param)
    return InvalidRequest(f"Invalid value for '{param}' ({shown}): {msg}.", param=param)
